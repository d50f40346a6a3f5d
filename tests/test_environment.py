"""The environment a stage records: versions that decide results, as tags and as a file."""

import json

import torch

from zerosearch.environment import environment, package_versions, version_tags


def test_versions_are_the_installed_ones_and_absent_packages_say_so():
    got = package_versions(("torch", "no-such-package-zs"))
    assert got == {"torch": torch.__version__, "no-such-package-zs": "absent"}


def test_environment_is_json_and_flattens_to_string_tags():
    env = environment()
    assert env["torch_threads"] == torch.get_num_threads() and env["packages"]["torch"] == torch.__version__
    assert json.loads(json.dumps(env)) == env
    tags = version_tags(env)
    assert tags["version.torch"] == torch.__version__ and tags["env.python"] == env["python"]
    assert all(isinstance(v, str) for v in tags.values()) and "env.packages" not in tags
