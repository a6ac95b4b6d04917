"""load_config: YAML with ${ENV} interpolation, strict validation naming the key, config_hash."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shipyard.config import Config, load_config
from shipyard.errors import ConfigError

ISSUE_YAML = """
store: sqlite:///${SHIPYARD_DB:-traces.db}
providers:
  primary:
    type: openai
    base_url: ${OPENAI_BASE_URL:-https://api.openai.com/v1}
    api_key: ${OPENAI_API_KEY}
  backup:
    type: anthropic
    api_key: ${ANTHROPIC_API_KEY}
  local:
    type: llama_cpp
models:
  chat:
    targets:
      - provider: primary
        model: gpt-4o-mini
      - provider: backup
        model: claude-3-5-haiku-latest
      - provider: local
        model: gemma-3-270m-q4_k_m
    retries: 2
    timeout_s: 30
prices:
  gpt-4o-mini: {input: 0.15, output: 0.60}
  claude-3-5-haiku-latest: {input: 0.80, output: 4.00}
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("SHIPYARD_DB", raising=False)
    return monkeypatch


def write(tmp_path: Path, text: str, name: str = "shipyard.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def config_error(source) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(source)
    return str(ei.value)


# ---- the happy path ---------------------------------------------------------------


def test_issue_shaped_yaml_loads_with_env(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    cfg = load_config(write(tmp_path, ISSUE_YAML))
    assert isinstance(cfg, Config)
    assert set(cfg.providers) == {"primary", "backup", "local"}
    assert cfg.providers["primary"]["api_key"] == "sk-test-openai"
    assert cfg.providers["backup"]["api_key"] == "sk-ant-test"
    assert cfg.providers["local"]["type"] == "llama_cpp"
    chat = cfg.models["chat"]
    assert [(t.provider, t.model) for t in chat.targets] == [
        ("primary", "gpt-4o-mini"),
        ("backup", "claude-3-5-haiku-latest"),
        ("local", "gemma-3-270m-q4_k_m"),
    ]
    assert chat.retries == 2
    assert chat.timeout_s == 30.0
    assert cfg.prices["gpt-4o-mini"].input == 0.15
    assert cfg.prices["claude-3-5-haiku-latest"].output == 4.0


def test_env_default_is_used_only_when_unset(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, ISSUE_YAML)
    cfg = load_config(path)
    assert cfg.providers["primary"]["base_url"] == "https://api.openai.com/v1"
    assert cfg.store == "sqlite:///traces.db"

    env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    env.setenv("SHIPYARD_DB", "/tmp/x.db")
    cfg = load_config(path)
    assert cfg.providers["primary"]["base_url"] == "http://127.0.0.1:9/v1"
    assert cfg.store == "sqlite:////tmp/x.db"


def test_env_inside_a_list(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.setenv("CHAT_MODEL", "gpt-4o")
    cfg = load_config(write(tmp_path, """
        providers: {p: {type: openai, api_key: k}}
        models:
          chat:
            targets: [{provider: p, model: "${CHAT_MODEL}"}]
    """))
    assert cfg.models["chat"].targets[0].model == "gpt-4o"


def test_missing_env_var_names_variable_and_key_path(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.delenv("OPENAI_API_KEY")
    msg = config_error(write(tmp_path, ISSUE_YAML))
    assert "OPENAI_API_KEY" in msg
    assert "providers.primary.api_key" in msg


def test_missing_env_var_in_list_names_index(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.delenv("CHAT_MODEL", raising=False)
    msg = config_error(write(tmp_path, """
        providers: {p: {type: openai}}
        models:
          chat:
            targets: [{provider: p, model: "${CHAT_MODEL}"}]
    """))
    assert "CHAT_MODEL" in msg
    assert "models.chat.targets[0].model" in msg


# ---- every error names its key ----------------------------------------------------


def _minimal(extra_chat: str = "", extra_provider: str = "", extra_top: str = "") -> str:
    return f"""
providers:
  primary:
    type: openai
    api_key: sk-x
{extra_provider}
models:
  chat:
    targets:
      - provider: primary
        model: gpt-4o-mini
{extra_chat}
{extra_top}
"""


def test_minimal_config_is_valid(tmp_path: Path) -> None:
    # the base of every broken variant below must itself load
    cfg = load_config(write(tmp_path, _minimal()))
    assert cfg.models["chat"].retries == 2  # default


@pytest.mark.parametrize(
    ("yaml_text", "must_contain"),
    [
        pytest.param(_minimal(extra_top="retries: 3"), ["retries", "unknown key"], id="unknown-top-level-key"),
        pytest.param(_minimal(extra_chat="    retires: 2"), ["models.chat.retires", "unknown key"],
                     id="typo-in-alias"),
        pytest.param(_minimal(extra_chat='    retries: "two"'), ["models.chat.retries"], id="wrong-type"),
        pytest.param(_minimal(extra_chat="    timeout_s: -1"), ["models.chat.timeout_s"], id="out-of-range"),
        pytest.param(_minimal(extra_provider="    bse_url: http://x"), ["providers.primary.bse_url", "unknown key"],
                     id="unknown-provider-key"),
        pytest.param(_minimal(extra_top="recording:\n  redact_patterns: ['sk-[']"),
                     ["recording.redact_patterns", "sk-["], id="invalid-regex"),
        pytest.param(_minimal(extra_top="recording:\n  queue_sze: 5"), ["recording.queue_sze"],
                     id="unknown-recording-key"),
        pytest.param(_minimal(extra_top="store: mysql://db"), ["store"], id="bad-store-url"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, yaml_text: str, must_contain: list[str]) -> None:
    msg = config_error(write(tmp_path, yaml_text))
    for s in must_contain:
        assert s in msg, f"{s!r} not in {msg!r}"


def test_unknown_provider_type_names_key_and_known_types(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, """
        providers:
          primary: {type: opneai}
        models:
          chat:
            targets: [{provider: primary, model: m}]
    """))
    assert "providers.primary.type" in msg
    assert "opneai" in msg
    assert "openai" in msg.replace("opneai", "")  # lists the known types


def test_provider_without_type(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, """
        providers:
          primary: {base_url: "http://x"}
    """))
    assert "providers.primary.type" in msg


def test_target_naming_undeclared_provider(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, """
        providers:
          primary: {type: openai}
        models:
          chat:
            targets:
              - {provider: primary, model: a}
              - {provider: secondary, model: b}
    """))
    assert "models.chat.targets[1].provider" in msg
    assert "secondary" in msg


def test_unknown_key_in_target(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, """
        providers:
          primary: {type: openai}
        models:
          chat:
            targets:
              - {provider: primary, model: a, timeout: 3}
    """))
    assert "models.chat.targets[0].timeout" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  primary: {type: openai\nmodels: [\n")
    msg = config_error(path)
    assert "YAML" in msg
    assert str(path) in msg


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, "- a\n- b\n"))
    assert "mapping" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = config_error(path)
    assert str(path) in msg


def test_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.models == {} and cfg.providers == {}


# ---- hashing ----------------------------------------------------------------------


def test_config_hash_ignores_api_key_only(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, ISSUE_YAML)
    h1 = load_config(path).config_hash()
    assert load_config(path).config_hash() == h1  # stable

    env.setenv("OPENAI_API_KEY", "sk-rotated")
    env.setenv("ANTHROPIC_API_KEY", "sk-ant-rotated")
    assert load_config(path).config_hash() == h1

    env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert load_config(path).config_hash() != h1


def test_config_hash_changes_with_alias_settings(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, _minimal(), "a.yaml")).config_hash()
    assert load_config(write(tmp_path, _minimal(extra_chat="    retries: 3"), "b.yaml")).config_hash() != base
    assert load_config(write(tmp_path, _minimal(extra_top="prices: {gpt-4o-mini: {input: 1, output: 2}}"),
                             "c.yaml")).config_hash() != base


def test_config_hash_has_no_secret(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    cfg = load_config(write(tmp_path, ISSUE_YAML))
    assert "sk-test-openai" not in cfg.config_hash()
    assert len(cfg.config_hash()) == 12


# ---- other sources ----------------------------------------------------------------


def test_embedded_default() -> None:
    cfg = load_config(None)
    assert list(cfg.models) == ["local"]
    target = cfg.models["local"].targets[0]
    assert cfg.providers[target.provider]["type"] == "llama_cpp"
    assert cfg.store.startswith("sqlite://")


def test_dict_source_is_validated_and_interpolated(env: pytest.MonkeyPatch) -> None:
    cfg = load_config({"providers": {"p": {"type": "openai", "api_key": "${OPENAI_API_KEY}"}}})
    assert cfg.providers["p"]["api_key"] == "sk-test-openai"
    with pytest.raises(ConfigError, match=r"models\.x\.targets"):
        load_config({"models": {"x": {"targets": []}}})


def test_config_object_passes_through(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, _minimal()))
    assert load_config(cfg) is cfg


@pytest.mark.parametrize("block, says", [
    ({"base_url": "api.example.com/v1"}, "unsupported URL"),
    ({"base_url": "http://h/v1", "headers": {"x-team": "a\r\nx-evil: 1"}}, "line break"),
    ({"base_url": "http://h/v1", "headers": {"x-team": "équipe ✓"}}, "latin-1"),
])
def test_provider_url_and_headers_are_checked_at_start_up(block: dict, says: str) -> None:
    from shipyard.engine import Engine

    cfg = load_config({"store": "none", "providers": {"up": {"type": "openai", **block}},
                       "models": {"chat": {"targets": [{"provider": "up", "model": "m"}]}}})
    with pytest.raises(ConfigError, match=rf"providers\.up: .*{says}"):
        Engine(cfg)
