from zerosearch.data.demos import demo_world, protocol_demos, reading_drills
from zerosearch.search.bm25 import BM25Engine

CLOSING = "\n</information>\n"


def _engine(world_size: int = 120):
    world, corpus = demo_world(0, world_size)
    return world, BM25Engine.build(corpus, k1=1.5, b=0.75, top_k=3)


def test_reading_drills_train_only_the_turns_that_follow_the_documents():
    world, engine = _engine()
    drills = reading_drills(world, engine, 30, seed=0)
    assert len(drills) == 30
    for drill in drills:
        texts = [text for text, _ in drill]
        trained = [i for i, (_, t) in enumerate(drill) if t]
        # one trained turn per search: after each closing tag, and nothing else
        assert trained == [i + 1 for i, text in enumerate(texts[:-1]) if text == CLOSING]
        assert 1 <= len(trained) <= 2 and trained[-1] == len(drill) - 1
        assert "<answer>" in texts[-1] and "I think I know" not in texts[-1]
        assert "That search missed" not in "".join(texts)
        # the answer is read off the documents right before it
        answer = texts[-1].split("<answer> ")[1].split(" </answer>")[0]
        assert answer in texts[-3]


def test_reading_drills_are_seeded_and_separate_from_the_demonstrations():
    world, engine = _engine()
    assert reading_drills(world, engine, 10, seed=3) == reading_drills(world, engine, 10, seed=3)
    assert reading_drills(world, engine, 10, seed=3) != reading_drills(world, engine, 10, seed=4)
    assert reading_drills(world, engine, 0, seed=3) == []
    # the demonstrations keep their own seeded stream
    assert protocol_demos(world, engine, 10, seed=3) == protocol_demos(world, engine, 10, seed=3)
    demo = protocol_demos(world, engine, 10, seed=3)[0]
    assert demo[1][1] is True  # a demonstration trains its first search; a drill does not
    assert reading_drills(world, engine, 1, seed=3)[0][1][1] is False
