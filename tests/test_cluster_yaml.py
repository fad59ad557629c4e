"""The cluster configs pass Ray's own offline validation and say what this project needs.

`ray up` has no dry run, so this runs the same checks it runs before touching a cloud:
`prepare_config` (merges the provider's defaults.yaml; for the `local` provider it also builds
the single node type from head_ip/worker_ips, all offline) and then `validate_config` (the
ray-schema.json JSON schema, plus the head_node_type/min_workers checks). No network, no cloud
calls (`bootstrap_config`, which would call AWS, is not used), no `ray up`.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"
INSTALL = "cd ~/hpo-finetune && pip install -e ."


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def validated(config: dict) -> dict:
    """What `ray up` checks before it starts anything; raises on an invalid config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))  # validate_config alone needs the defaults merged in
    validate_config(prepared)
    return prepared


def driver_tokens(command: str) -> int:
    """The `trial_driver` count in a `ray start --resources='{...}'` command."""
    m = re.search(r"--resources='(\{.*?\})'", command)
    assert m, f"no --resources='{{...}}' in {command!r}"
    return json.loads(m.group(1))["trial_driver"]


def ray_start(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, commands
    return starts[0]


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_config_passes_rays_validation(path):
    validated(load(path))


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_installs_the_project_like_the_readme_and_no_nightly_ray(path):
    raw = load(path)
    assert raw["file_mounts"]["~/hpo-finetune"] == "."
    assert INSTALL in raw["setup_commands"]
    prepared = validated(raw)
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands") for c in prepared.get(key, [])]
    assert INSTALL in prepared["head_setup_commands"] and INSTALL in prepared["worker_setup_commands"]
    assert not [c for c in commands if "ray-wheels" in c or "dev0" in c], "a provider default install survived"


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_head_offers_trial_drivers_with_the_dashboard_on_localhost(path):
    head_start = ray_start(load(path)["head_start_ray_commands"])
    assert "--head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert driver_tokens(head_start) == 8


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_every_node_uses_the_same_ray_token(path):
    raw = load(path)
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token ray start" in ray_start(raw[key]), key
    assert "ray start --address=$RAY_HEAD_IP:6379" in ray_start(raw["worker_start_ray_commands"])


def test_aws_head_and_autoscaling_gpu_workers():
    raw = load(AWS)
    assert raw["provider"]["type"] == "aws"
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"trial_driver": 8}
    # `ray up` exports the node type's resources as RAY_OVERRIDE_RESOURCES, which wins over
    # --resources in the start command: keep the two the same.
    assert driver_tokens(ray_start(raw["head_start_ray_commands"])) == head["resources"]["trial_driver"]
    gpu_types = {name: t for name, t in types.items() if name != raw["head_node_type"] and t["resources"].get("GPU")}
    assert gpu_types, "no GPU worker type"
    for name, t in gpu_types.items():
        assert t["min_workers"] == 0, name
        assert t["max_workers"] >= 1, name
        assert t["resources"]["GPU"] == 1 and t["resources"]["CPU"] >= 1, name
    assert raw["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())
    prepared = validated(raw)
    assert any("boto3" in c for c in prepared["head_setup_commands"]), "the autoscaler on the head needs boto3"


def test_onprem_has_no_node_types_and_fixed_hosts():
    raw = load(ONPREM)
    assert raw["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    assert "available_node_types" not in raw
    prepared = validated(raw)
    (node_type,) = prepared["available_node_types"].values()  # built by Ray from the IPs
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])


def test_commented_onprem_block_in_cluster_yaml_is_cluster_onprem_yaml():
    text = AWS.read_text()
    block = text.split("# ----- BEGIN on-premise alternative -----\n", 1)[1]
    block = block.split("# ----- END on-premise alternative -----", 1)[0]
    lines = block.splitlines()
    assert all(line == "#" or line.startswith("# ") for line in lines), "every line of the block is commented out"
    uncommented = "\n".join(line[2:] for line in lines)
    assert yaml.safe_load(uncommented) == load(ONPREM)


# --- what must be refused -----------------------------------------------------------------------

@pytest.mark.parametrize("path", [AWS, ONPREM], ids=lambda p: p.name)
def test_a_misspelt_key_is_refused(path):
    bad = load(path)
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="'setup_comands' was unexpected"):
        validated(bad)


def test_fractional_gpus_in_node_resources_are_refused():
    bad = load(AWS)
    bad["available_node_types"]["gpu_worker"]["resources"] = {"GPU": 0.5}
    with pytest.raises(jsonschema.ValidationError, match="0.5 is not of type 'integer'"):
        validated(bad)


def test_misspelt_node_type_key_is_refused():
    bad = load(AWS)
    gpu = bad["available_node_types"]["gpu_worker"]
    gpu["min_worker"] = gpu.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="'min_worker' was unexpected"):
        validated(bad)


def test_onprem_with_node_types_is_refused():
    import click

    bad = load(ONPREM)
    bad["available_node_types"] = load(AWS)["available_node_types"]
    with pytest.raises(click.ClickException, match="available_node_types is not supported"):
        validated(bad)
