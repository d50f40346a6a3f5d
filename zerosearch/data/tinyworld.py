"""tinyworld: a seeded synthetic QA world that no pretrained model can know in advance.

Invented entities with pronounceable random names (people, cities, companies, countries),
typed attributes and relations between them; a corpus of short encyclopedia-style documents
(one or two per entity); single-hop and two-hop questions with gold answer aliases.

Splits mirror the paper's benchmarks: ``train`` (in-domain templates, train subjects),
``tiny_single`` (single-hop, in-domain, like NQ), ``tiny_multi`` (two-hop, in-domain, like
HotpotQA) and ``tiny_ood`` (unseen templates and unseen relation chains, like 2Wiki/Musique).
Question subjects are partitioned into train / test entities, so test questions are about
entities the policy never saw a training question for. The base stage's protocol
demonstrations come from a separate world (another seed), so they share no facts with this one.

Same seed and sizes -> byte-identical files.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gr", "kr", "tr", "st", "sh", "h"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "o", "ei", "ou"]
_CODAS = ["", "", "", "", "n", "r", "l", "s", "m", "x"]
OCCUPATIONS = ["painter", "chemist", "sculptor", "lawyer", "engineer", "poet", "astronomer",
               "architect", "composer", "surgeon", "botanist", "cartographer"]
INDUSTRIES = ["shipbuilding", "textiles", "mining", "software", "glassmaking", "banking",
              "brewing", "aviation", "publishing", "robotics"]
COMPANY_SUFFIXES = ["Works", "Industries", "Group", "Company", "Labs", "Holdings"]
LANGUAGES_SUFFIX = "ish"
CURRENCY_SUFFIXES = ["crown", "mark", "dinar", "florin", "real"]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _word(rng: random.Random, n_min: int = 2, n_max: int = 2) -> str:
    return "".join(_syllable(rng) for _ in range(rng.randint(n_min, n_max))).capitalize()


@dataclass
class Entity:
    id: str
    type: str  # person | city | company | country
    name: str
    aliases: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)  # relation -> entity id, or a literal


@dataclass(frozen=True)
class Template:
    name: str
    path: tuple[str, ...]  # relations followed from the subject
    subject_type: str
    text: str  # question with {s}


# In-domain templates: used for train, tiny_single and tiny_multi.
SINGLE_HOP = [
    Template("born_in", ("born_in",), "person", "Where was {s} born?"),
    Template("works_for", ("works_for",), "person", "Which company does {s} work for?"),
    Template("occupation", ("occupation",), "person", "What is the occupation of {s}?"),
    Template("birth_year", ("birth_year",), "person", "In which year was {s} born?"),
    Template("city_country", ("country",), "city", "In which country is {s} located?"),
    Template("headquarters", ("headquarters",), "company", "Where is {s} headquartered?"),
    Template("founder", ("founder",), "company", "Who founded {s}?"),
    Template("industry", ("industry",), "company", "Which industry is {s} in?"),
    Template("capital", ("capital",), "country", "What is the capital of {s}?"),
    Template("currency", ("currency",), "country", "What currency is used in {s}?"),
]
TWO_HOP = [
    Template("born_country", ("born_in", "country"), "person", "In which country was {s} born?"),
    Template("employer_hq", ("works_for", "headquarters"), "person",
             "Where is the company that {s} works for headquartered?"),
    Template("employer_founder", ("works_for", "founder"), "person",
             "Who founded the company that {s} works for?"),
    Template("hq_country", ("headquarters", "country"), "company",
             "In which country is {s} headquartered?"),
]
# Out-of-domain: unseen wordings of seen relations and unseen relation chains.
OOD = [
    Template("ood_birthplace", ("born_in",), "person", "{s} was born in which city?"),
    Template("ood_founder_name", ("founder",), "company", "Name the person who started {s}."),
    Template("ood_founder_job", ("founder", "occupation"), "company",
             "What was the profession of the founder of {s}?"),
    Template("ood_city_language", ("country", "language"), "city",
             "What language do people speak in the country where {s} lies?"),
    Template("ood_capital_founded", ("capital", "founded"), "country",
             "When was the capital of {s} founded?"),
    Template("ood_employer_industry", ("works_for", "industry"), "person",
             "In what industry is the employer of {s}?"),
]

# How each relation is phrased in a search query (used by the protocol demonstrations).
RELATION_QUERY_WORDS = {
    "born_in": "birthplace", "works_for": "employer", "occupation": "occupation",
    "birth_year": "born year", "country": "country", "headquarters": "headquarters",
    "founder": "founder", "industry": "industry", "capital": "capital", "currency": "currency",
    "language": "language",
}


class World:
    """Entities by id with helpers to follow relations and name answers."""

    def __init__(self, entities: list[Entity]):
        self.entities = entities
        self.by_id = {e.id: e for e in entities}

    def of_type(self, type_: str) -> list[Entity]:
        return [e for e in self.entities if e.type == type_]

    def follow(self, subject: Entity, path: tuple[str, ...]) -> list[Any]:
        """The chain of values along ``path``: entities for relations, a literal at the end."""
        chain: list[Any] = []
        node: Any = subject
        for rel in path:
            value = node.attrs[rel]
            node = self.by_id.get(value, value) if isinstance(value, str) else value
            chain.append(node)
        return chain

    @staticmethod
    def answer_aliases(value: Any) -> list[str]:
        if isinstance(value, Entity):
            return [value.name, *value.aliases]
        return [str(value)]

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.entities]

    @classmethod
    def from_json(cls, records: list[dict[str, Any]]) -> World:
        return cls([Entity(**r) for r in records])


def _unique_names(rng: random.Random, n: int, taken: set[str], make) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = make(rng)
        if name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    return names


def build_world(seed: int, n_entities: int) -> World:
    """Invent ``n_entities`` entities: ~5% countries, 20% cities, 15% companies, rest people."""
    rng = random.Random(seed)
    n_country = max(8, n_entities // 20)
    n_city = max(16, n_entities // 5)
    n_company = max(12, n_entities * 3 // 20)
    n_person = n_entities - n_country - n_city - n_company
    taken: set[str] = set()
    countries = [
        Entity(f"country-{i}", "country", name, [f"Republic of {name}"])
        for i, name in enumerate(_unique_names(rng, n_country, taken, lambda r: _word(r) + "ia"))
    ]
    cities = [
        Entity(f"city-{i}", "city", name, [f"{name} City"])
        for i, name in enumerate(_unique_names(rng, n_city, taken, _word))
    ]
    companies = []
    for i, stem in enumerate(_unique_names(rng, n_company, taken, _word)):
        companies.append(Entity(f"company-{i}", "company", f"{stem} {rng.choice(COMPANY_SUFFIXES)}", [stem]))
    surnames = _unique_names(rng, n_person, taken, _word)
    people = []
    for i, surname in enumerate(surnames):
        first = _word(rng, 1, 2)
        people.append(Entity(f"person-{i}", "person", f"{first} {surname}", [surname]))

    for c in countries:
        c.attrs["currency"] = f"{c.name[:-2]} {rng.choice(CURRENCY_SUFFIXES)}"
        c.attrs["language"] = c.name[:-2] + LANGUAGES_SUFFIX
    for i, city in enumerate(cities):  # every country gets at least one city
        city.attrs["country"] = countries[i % n_country].id if i < n_country else rng.choice(countries).id
        city.attrs["founded"] = rng.randint(900, 1800)
    for c in countries:
        own = [city for city in cities if city.attrs["country"] == c.id]
        c.attrs["capital"] = rng.choice(own).id
    for p in people:
        p.attrs["born_in"] = rng.choice(cities).id
        p.attrs["works_for"] = rng.choice(companies).id
        p.attrs["occupation"] = rng.choice(OCCUPATIONS)
        p.attrs["birth_year"] = rng.randint(1820, 1990)
    for co in companies:
        co.attrs["headquarters"] = rng.choice(cities).id
        co.attrs["founder"] = rng.choice(people).id
        co.attrs["industry"] = rng.choice(INDUSTRIES)
        co.attrs["founded"] = rng.randint(1850, 2010)
    return World(countries + cities + companies + people)


def build_corpus(world: World, seed: int) -> list[dict[str, str]]:
    """Short encyclopedia-style documents: two per person, one per other entity."""
    rng = random.Random(seed + 1)
    name = lambda ref: world.by_id[ref].name  # noqa: E731
    docs: list[dict[str, str]] = []

    def add(entity: Entity, title: str, text: str) -> None:
        docs.append({"id": f"doc-{len(docs)}", "title": title, "text": text, "entity": entity.id})

    for e in world.entities:
        a = e.attrs
        if e.type == "person":
            he = rng.choice(["He", "She"])
            add(e, e.name, rng.choice([
                f"{e.name} is {_article(a['occupation'])} who works for {name(a['works_for'])}. "
                f"{e.aliases[0]} is known for a long career as {_article(a['occupation'])}.",
                f"{e.name} is {_article(a['occupation'])}. {he} works for {name(a['works_for'])}, "
                f"where {e.aliases[0]} has spent most of a career.",
            ]))
            add(e, f"{e.name} (early life)", rng.choice([
                f"{e.name} was born in {name(a['born_in'])} in {a['birth_year']}. "
                f"{he} grew up in {name(a['born_in'])}.",
                f"Born in {a['birth_year']} in the city of {name(a['born_in'])}, "
                f"{e.name} spent childhood years there.",
            ]))
        elif e.type == "city":
            add(e, e.name, rng.choice([
                f"{e.name} is a city in {name(a['country'])}. It was founded in {a['founded']}.",
                f"{e.name}, founded in {a['founded']}, is a city located in {name(a['country'])}.",
            ]))
        elif e.type == "company":
            add(e, e.name, rng.choice([
                f"{e.name} is {_article(a['industry'])} company headquartered in {name(a['headquarters'])}. "
                f"It was founded by {name(a['founder'])} in {a['founded']}.",
                f"Founded in {a['founded']} by {name(a['founder'])}, {e.name} works in "
                f"{a['industry']} and has its headquarters in {name(a['headquarters'])}.",
            ]))
        else:
            add(e, e.name, rng.choice([
                f"{e.name} is a country whose capital is {name(a['capital'])}. "
                f"Its currency is the {a['currency']} and people speak {a['language']}.",
                f"The capital of {e.name} is {name(a['capital'])}. {e.name} uses the "
                f"{a['currency']} as currency; its language is {a['language']}.",
            ]))
    return docs


def partition_subjects(world: World, seed: int, test_fraction: float) -> dict[str, str]:
    """Entity id -> 'train' | 'test', stratified by entity type."""
    rng = random.Random(seed + 2)
    role: dict[str, str] = {}
    for type_ in ("person", "city", "company", "country"):
        ids = [e.id for e in world.of_type(type_)]
        rng.shuffle(ids)
        n_test = max(1, round(len(ids) * test_fraction))
        for i, eid in enumerate(ids):
            role[eid] = "test" if i < n_test else "train"
    return role


def make_question(world: World, subject: Entity, template: Template) -> dict[str, Any]:
    chain = world.follow(subject, template.path)
    return {
        "question": template.text.format(s=subject.name),
        "golden_answers": World.answer_aliases(chain[-1]),
        "template": template.name,
        "subject": subject.id,
        "chain": [c.id if isinstance(c, Entity) else str(c) for c in chain],
    }


def sample_questions(
    world: World, subjects: list[Entity], templates: list[Template], n: int, rng: random.Random,
    prefix: str,
) -> list[dict[str, Any]]:
    """``n`` distinct (subject, template) questions, as evenly spread over templates as possible."""
    pairs = [(s, t) for t in templates for s in subjects if s.type == t.subject_type]
    rng.shuffle(pairs)
    pairs.sort(key=lambda st: templates.index(st[1]))  # stable: shuffled within template
    by_template: dict[str, list] = {}
    for s, t in pairs:
        by_template.setdefault(t.name, []).append((s, t))
    if len(pairs) < n:
        raise ValueError(
            f"the world is too small for {n} distinct {prefix!r} questions (at most {len(pairs)}): "
            "raise data.world.n_entities or lower the question counts in params"
        )
    picked: list[tuple[Entity, Template]] = []
    while len(picked) < n:
        for name in list(by_template):
            if by_template[name] and len(picked) < n:
                picked.append(by_template[name].pop())
    rng.shuffle(picked)
    return [{"id": f"{prefix}-{i}", **make_question(world, s, t)} for i, (s, t) in enumerate(picked)]


def generate(seed: int, n_entities: int, n_train: int, n_test: int, test_fraction: float,
             two_hop_fraction: float) -> dict[str, Any]:
    """Build the whole world: entities, corpus, question splits and the subject partition."""
    world = build_world(seed, n_entities)
    corpus = build_corpus(world, seed)
    role = partition_subjects(world, seed, test_fraction)
    rng = random.Random(seed + 3)
    subjects = {r: [e for e in world.entities if role[e.id] == r] for r in ("train", "test")}
    n_two = round(n_train * two_hop_fraction)
    train = (sample_questions(world, subjects["train"], SINGLE_HOP, n_train - n_two, rng, "train-s")
             + sample_questions(world, subjects["train"], TWO_HOP, n_two, rng, "train-m"))
    rng.shuffle(train)
    splits = {
        "train": train,
        "tiny_single": sample_questions(world, subjects["test"], SINGLE_HOP, n_test, rng, "single"),
        "tiny_multi": sample_questions(world, subjects["test"], TWO_HOP, n_test, rng, "multi"),
        "tiny_ood": sample_questions(world, subjects["test"], OOD, n_test, rng, "ood"),
    }
    return {"world": world, "corpus": corpus, "splits": splits, "roles": role}


def load_world(data_dir: str | Path) -> tuple[World, dict[str, str]]:
    """The world the data stage wrote (``<data_dir>/world.json``) and each entity's subject role."""
    raw = json.loads((Path(data_dir) / "world.json").read_text(encoding="utf-8"))
    return World.from_json(raw["entities"]), raw["roles"]
