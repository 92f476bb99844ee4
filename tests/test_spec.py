"""Study schema: errors name the file, the key path, what was expected, a suggestion."""

import pytest

from raystudy.cli import main
from raystudy.errors import StudyError, StudyErrors
from raystudy.spec import load_study
from raystudy.spec.load import load_document

BASE = """\
name: t
data: {dataset: synthetic}
model: {arch: stdcnn_mnist}
train: {epochs: 1, batch_size: 32, optimizer: {name: sgd, lr: 0.1}}
evaluate: [accuracy]
"""


def load_text(tmp_path, text, **kw):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return load_study(p, **kw)


def messages(exc: StudyError) -> list[str]:
    return [e.render() for e in (exc.errors if isinstance(exc, StudyErrors) else [exc])]


def test_valid_study_loads(tmp_path):
    s = load_text(tmp_path, BASE)
    assert s.name == "t" and len(s.trials) == 1


def test_unknown_key_names_file_path_line_and_suggestion(tmp_path):
    text = BASE.replace("train: {epochs: 1,", "train: {epocs: 1,")
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, text)
    msg = messages(ei.value)[0]
    assert "s.yaml" in msg and "train.epocs" in msg
    assert "did you mean 'epochs'" in msg
    assert "line 4" in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, BASE + "modle: {}\n")
    assert "did you mean 'model'" in messages(ei.value)[0]


def test_wrong_type_names_path_and_value(tmp_path):
    text = BASE.replace("batch_size: 32", "batch_size: many")
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, text)
    msg = messages(ei.value)[0]
    assert "train.batch_size" in msg and "'many'" in msg


def test_unknown_model_name_suggests_closest(tmp_path):
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, BASE.replace("stdcnn_mnist", "stdcnn_mnsit"))
    msg = messages(ei.value)[0]
    assert "model.arch" in msg and "did you mean 'stdcnn_mnist'" in msg


def test_unknown_option_of_a_registry_entry(tmp_path):
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, BASE.replace("{name: sgd, lr: 0.1}", "{name: sgd, lr: 0.1, momentun: 0.9}"))
    msg = messages(ei.value)[0]
    assert "train.optimizer.momentun" in msg and "did you mean 'momentum'" in msg


def test_unknown_metric_and_optimizer(tmp_path):
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, BASE.replace("[accuracy]", "[acuracy]").replace("name: sgd", "name: sdg"))
    msgs = " | ".join(messages(ei.value))
    assert "evaluate.0" in msgs and "did you mean 'accuracy'" in msgs
    assert "train.optimizer.name" in msgs and "did you mean 'sgd'" in msgs


def test_malformed_yaml_has_line_and_column(tmp_path):
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, "name: t\nmodel: {arch: x\ntrain: [1, 2\n")
    msg = messages(ei.value)[0]
    assert "malformed YAML" in msg and "line" in msg and "column" in msg


def test_out_of_range_values(tmp_path):
    for bad, path in [("epochs: 1", "epochs: -1"), ("batch_size: 32", "batch_size: 0")]:
        with pytest.raises(StudyError) as ei:
            load_text(tmp_path, BASE.replace(*((bad, path))))
        assert "train." in messages(ei.value)[0]
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, BASE + "resources: {gpu: 1.5}\n")
    assert "resources.gpu" in messages(ei.value)[0]
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, BASE.replace("optimizer:", "augment: {rotation: 200}, optimizer:"))
    assert "train.augment.rotation" in messages(ei.value)[0]


def test_smoke_and_set_overrides(tmp_path):
    s = load_text(tmp_path, BASE.replace("epochs: 1", "epochs: 50") + "smoke: {train.batch_size: 8}\n",
                  smoke=True, sets=["seed=3"])
    cfg = s.trials[0].config
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["batch_size"] == 8 and cfg["seed"] == 3


def test_set_pins_a_varied_path(tmp_path):
    s = load_text(tmp_path, BASE + "space:\n  seed: {grid: [0, 1, 2]}\n", sets=["seed=7"])
    assert len(s.trials) == 1 and s.trials[0].config["seed"] == 7


ZIPPED = BASE + """space:
  method:
    zip:
      train.method:
        - {name: pgd_at, steps: 2}
        - {name: trades, steps: 3}
  train.method.eps: {grid: [0.1, 0.3]}
"""


def test_set_on_a_zip_keeps_that_row_with_its_trial_id(tmp_path):
    full = {(t.params["method"], t.config["train"]["method"]["eps"]): t for t in load_text(tmp_path, ZIPPED).trials}
    one = load_text(tmp_path, ZIPPED, sets=["method=1"]).trials
    assert [t.config["train"]["method"]["name"] for t in one] == ["trades", "trades"]
    assert {t.trial_id for t in one} == {full[(1, 0.1)].trial_id, full[(1, 0.3)].trial_id}
    # Pinning the later grid too: the constant still lands inside the zipped method (space
    # order), so the trial is the full study's trial, id and all.
    pinned = load_text(tmp_path, ZIPPED, sets=["method=1", "train.method.eps=0.3"]).trials
    assert len(pinned) == 1 and pinned[0].config["train"]["method"] == {"name": "trades", "steps": 3, "eps": 0.3}
    assert pinned[0].trial_id == full[(1, 0.3)].trial_id
    assert len(load_text(tmp_path, ZIPPED, sets=["method=[0, 1]"]).trials) == 4
    # Named with the `space.` prefix, it is the same entry.
    assert {t.trial_id for t in load_text(tmp_path, ZIPPED, sets=["space.method=1"]).trials} == \
        {t.trial_id for t in one}
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, ZIPPED, sets=["method=2"])
    assert "space.method.only" in messages(ei.value)[0] and "0 to 1" in messages(ei.value)[0]


def test_an_entry_that_would_erase_an_earlier_one_is_refused(tmp_path):
    # A profile adding `space.train.method` puts it after the eps grid: the method mapping
    # would silently replace the eps set inside it, so the load fails and says how to fix it.
    text = BASE.replace("optimizer:", "method: {name: pgd_at}, optimizer:") + """space:
  train.method.eps: {grid: [0.1, 0.3]}
profiles:
  adv: {space.train.method: {grid: [{name: pgd_at}, {name: trades}]}}
"""
    load_text(tmp_path, text)
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, text, profile="adv")
    msg = messages(ei.value)[0]
    assert "space.train.method" in msg and "overwrites train.method.eps" in msg and "move space.train.method above" in msg


def test_profile_applies_overrides_and_unknown_profile_errors(tmp_path):
    text = BASE + "profiles:\n  cpu: {train.epochs: 4}\n"
    assert load_text(tmp_path, text, profile="cpu").trials[0].config["train"]["epochs"] == 4
    with pytest.raises(StudyError) as ei:
        load_text(tmp_path, text, profile="cpuu")
    assert "did you mean 'cpu'" in messages(ei.value)[0]


def test_eps_fraction_strings_are_numbers():
    from pydantic import TypeAdapter

    from raystudy.spec.types import Eps
    assert TypeAdapter(Eps).validate_python("8/255") == pytest.approx(8 / 255)
    with pytest.raises(Exception):
        TypeAdapter(Eps).validate_python("2")  # outside [0, 1]


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("stdcnn_mnist", "nope"))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "model.arch" in err


def test_non_mapping_document():
    with pytest.raises(StudyError):
        load_document([1, 2, 3])


def test_shipped_studies_validate():
    import glob
    files = sorted(glob.glob("studies/**/*.yaml", recursive=True))
    assert files
    for f in files:
        load_study(f)
        load_study(f, smoke=True)


def test_new_field_stays_out_of_the_dump_at_its_default():
    """Options added to trial-config sections must not change the ids of existing trials."""
    from raystudy.spec.schema import Strict, new_field

    class Section(Strict):
        old: int = 1
        added: int = new_field(0, ge=0)
        nested: dict = new_field(default_factory=dict)

    assert Section().model_dump(mode="json") == {"old": 1}
    assert Section(added=3).model_dump(mode="json") == {"old": 1, "added": 3}
    assert Section(nested={"a": 1}).model_dump() == {"old": 1, "nested": {"a": 1}}
    assert Section.model_validate({"added": 2}).added == 2
    import pydantic
    with pytest.raises(pydantic.ValidationError):
        Section(added=-1)
