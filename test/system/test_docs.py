"""The documentation cannot drift from the code: the Parameters table lists exactly the declared
parameters with their types and defaults; the shipped Fast DDS profile is what the docs promise; the
README stays short and every relative link in the README, the model card and docs/ resolves."""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from mask3d_ros.ros import params

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\|\s*`(?P<name>[^`]+)`\s*\|\s*(?P<type>[^|]+?)\s*\|"
                 r"\s*`(?P<default>[^`]*)`\s*\|\s*(?P<text>.+?)\s*\|$")


def parameter_rows(text: str):
    """Rows of the table between the parameters markers (or under a '## Parameters' heading)."""
    if "<!-- parameters:begin" in text:
        block = text.split("<!-- parameters:begin", 1)[1].split("<!-- parameters:end", 1)[0]
    else:
        block = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    return [m.groupdict() for line in block.splitlines() if (m := ROW.match(line.strip()))]


def documents():
    return [REPO / "README.md"]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.name)
def test_parameters_table_matches_the_declared_parameters(doc):
    rows = parameter_rows(doc.read_text())
    documented = [r["name"] for r in rows]
    declared = [p.name for p in params.PARAMETERS]
    missing, extra = set(declared) - set(documented), set(documented) - set(declared)
    assert not missing and not extra, f"{doc.name}: undocumented {sorted(missing)}, not declared {sorted(extra)}"
    assert documented == declared, "same order as the schema, so the table reads by topic"
    for row in rows:
        spec = params.PARAMETERS_BY_NAME[row["name"]]
        assert row["type"] == spec.type, row["name"]
        assert row["default"] == params.format_default(spec), row["name"]
        assert len(row["text"]) > 10, row["name"]


def test_every_parameter_has_a_description_and_a_valid_default():
    for spec in params.PARAMETERS:
        assert spec.description.strip().endswith((".", ")")), spec.name
        _, problem = params.check_value(spec, spec.default)
        assert problem is None, (spec.name, problem)


def test_validation_reports_every_problem_with_the_parameter_name():
    with pytest.raises(params.ParameterError) as error:
        params.validate({"trigger.rate": 0, "input_qos.depth": "x", "roi.min": [1, 2], "model.device": "tpu",
                         "model.allow_random_weights": True})
    text = str(error.value)
    for name in ("trigger.rate", "input_qos.depth", "roi.min", "model.device"):
        assert name in text
    assert len(error.value.problems) == 4


def test_cross_parameter_checks():
    base = {"model.allow_random_weights": True}
    assert params.validate({**base, "pose_timeout": 1})["pose_timeout"] == 1.0, "integers are fine for floats"
    for bad, text in (({"roi.enabled": True, "roi.min": [0, 0, 0], "roi.max": [1, 0, 1]}, "below roi.max"),
                      ({"roi.min_range": 5.0, "roi.max_range": 2.0}, "must exceed"),
                      ({"pose_source": "tf", "fixed_frame": ""}, "fixed_frame must be set"),
                      ({"model.half_precision": True, "model.device": "cpu"}, "CUDA"),
                      ({"points_topic": "bad topic"}, "valid ROS topic"),
                      ({"odometry.body_to_sensor": [0, 0, 0, 0, 0, 0, 0]}, "quaternion")):
        with pytest.raises(params.ParameterError, match=text):
            params.validate({**base, **bad})
    with pytest.raises(params.ParameterError, match="model.checkpoint is empty"):
        params.validate({"model.checkpoint": ""})
    assert params.validate({})["model.checkpoint"] == "model/mask3d_tabletop.ckpt", "the bundled model by default"


def test_fastdds_profile_is_shared_memory_with_large_limits():
    root = ET.parse(REPO / "config" / "fastdds_large_clouds.xml").getroot()
    ns = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    shm = [d for d in root.iterfind(".//f:transport_descriptor", ns) if d.findtext("f:type", namespaces=ns) == "SHM"]
    assert len(shm) == 1
    assert int(shm[0].findtext("f:segment_size", namespaces=ns)) == 32 * 2**20
    assert int(shm[0].findtext("f:maxMessageSize", namespaces=ns)) == 16 * 2**20
    participant = root.find(".//f:participant", ns)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext(".//f:useBuiltinTransports", namespaces=ns) == "false"
    used = [e.text for e in participant.iterfind(".//f:userTransports/f:transport_id", ns)]
    assert used == [shm[0].findtext("f:transport_id", namespaces=ns)]
    promise = (REPO / "docs" / "troubleshooting.md").read_text()
    assert "config/fastdds_large_clouds.xml" in promise
    assert "32 MB segment, 16 MB max message" in promise


def test_rviz_config_shows_the_outputs():
    config = yaml.safe_load((REPO / "config" / "mask3d.rviz").read_text())
    displays = {d["Class"]: d for d in config["Visualization Manager"]["Displays"]}
    assert displays["rviz_default_plugins/PointCloud2"]["Topic"]["Value"] == "/mask3d/labeled_cloud"
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "/mask3d/markers"
    assert "rviz_default_plugins/TF" in displays


def test_readme_stays_short_with_the_interfaces_early():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, "details belong in docs/"
    inputs = [i for i, line in enumerate(lines, 1) if line.lstrip("#").strip() == "Inputs" and line.startswith("#")]
    assert inputs and inputs[0] < 80, "the Inputs table comes right after the purpose and the data flow"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", [REPO / "README.md", REPO / "model" / "README.md",
                                 *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(doc):
    for target in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = doc.parent / path if path else doc
        assert file.exists(), f"{doc.relative_to(REPO)}: broken link {target}"
        if anchor and file.suffix == ".md":
            assert anchor in heading_anchors(file.read_text()), f"{doc.relative_to(REPO)}: no heading for {target}"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of the markdown headings (outside code blocks)."""
    anchors, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors
