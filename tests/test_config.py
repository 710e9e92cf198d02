import pytest
import yaml

from bdc_ray.config import Config, ConfigError, apply_override, load_config, save_config

LOCAL = "configs/local.yaml"


def test_local_config_loads_and_has_the_embedded_default():
    cfg = load_config(LOCAL)
    assert cfg.models[cfg.base_model].path == "smollm2-135m-instruct"
    assert {a.model for a in cfg.agents} == {cfg.base_model}


def test_unknown_key_is_named_with_allowed_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("search:\n  rolouts: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "search.rolouts: unknown key" in msg
    assert "rollouts" in msg and "max_depth" in msg  # the keys that do exist


def test_unknown_key_inside_a_named_model_lists_model_fields():
    with pytest.raises(ConfigError) as e:
        load_config(LOCAL, ["models.smollm2.bakend=vllm"])
    assert "models.smollm2.bakend: unknown key" in str(e.value)
    assert "backend" in str(e.value)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as e:
        load_config(LOCAL, ["search.rollouts=many"])
    assert "search.rollouts" in str(e.value) and "'many'" in str(e.value)


def test_wrong_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(LOCAL, ["search.q_mode=median"])
    assert "search.q_mode" in str(e.value)
    assert "'max'" in str(e.value) and "'mean'" in str(e.value)


def test_overrides_parse_yaml_values_and_list_indices():
    cfg = load_config(
        LOCAL,
        [
            "search.rollouts=8",
            "search.early_stop=false",
            "agents.1.temperature=0.3",
            "experts.target_modules=[q_proj, k_proj]",
            "cluster.k=auto",
        ],
    )
    assert cfg.search.rollouts == 8 and cfg.search.early_stop is False
    assert cfg.agents[1].temperature == 0.3
    assert cfg.experts.target_modules == ["q_proj", "k_proj"]
    assert cfg.cluster.k == "auto"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("search", "expected KEY=VALUE"),
        ("agents.7.temperature=1", "list index below 2"),
        ("seed.x=1", "is a value, not a section"),
    ],
)
def test_malformed_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(LOCAL, [override])


def test_cross_references_are_checked():
    with pytest.raises(
        ConfigError, match=r"agents.0.model: unknown model 'gpt'; defined models: smollm2"
    ):
        load_config(LOCAL, ["agents.0.model=gpt"])
    with pytest.raises(ConfigError, match="base_model: unknown model"):
        load_config(LOCAL, ["base_model=nope"])


def test_openai_backend_requires_base_url():
    with pytest.raises(ConfigError, match="base_url is required"):
        load_config(LOCAL, ["models.smollm2.backend=openai"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(lst)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(LOCAL, ["search.rollouts=5"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()
    assert again.fingerprint("search") != load_config(LOCAL).fingerprint("search")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["search"]["rollouts"] == 5


def test_defaults_validate_without_a_file():
    assert isinstance(load_config(None), Config)


def test_apply_override_creates_sections():
    d: dict = {}
    apply_override(d, "search.width=2")
    assert d == {"search": {"width": 2}}


def test_the_study_config_is_the_methods_budget_on_every_problem():
    study, default = load_config("configs/study.yaml").search, load_config(None).search
    for key in ("width", "trials", "rollouts", "max_depth", "max_refines", "gamma", "c", "c_base"):
        assert getattr(study, key) == getattr(default, key), key
    cfg = load_config("configs/study.yaml")
    assert cfg.data.max_train is cfg.data.max_test is None
    assert study.train_limit is study.test_limit is None and not cfg.cluster.reference_solutions
