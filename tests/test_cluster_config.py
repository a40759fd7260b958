"""cluster.yaml is a valid Ray cluster-launcher config (checked against Ray's own schema)."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from support import REPO


def load() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_ray_schema():
    config = load()
    validate_config(prepare_config(config))  # prepare_config fills Ray's defaults, as `ray up` does
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1 and workers["min_workers"] == 0  # autoscaling GPU group
    assert "GPU" not in config["available_node_types"]["head"]["resources"]
    assert any("pip install" in c and "crysray" in c for c in config["setup_commands"])
    # campaigns go to S3 and replicas write their units themselves: workers need a role
    assert ":instance-profile/" in workers["node_config"]["IamInstanceProfile"]["Arn"]


def test_schema_rejects_a_broken_config():
    config = copy.deepcopy(load())
    config["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises((jsonschema.ValidationError, ValueError, RuntimeError)):
        validate_config(prepare_config(config))
