"""Settings from flags and environment variables."""

from __future__ import annotations

import pytest

from llmserver.settings import load_settings


def test_defaults_are_offline_on_port_8000():
    settings = load_settings([], {})
    assert settings.port == 8000 and settings.upstream == "offline" and settings.model == "gpt-4o-mini"
    assert settings.max_body_bytes == 1024 * 1024


def test_a_key_or_a_base_url_selects_openai_and_aliases_work():
    assert load_settings([], {"OPENAI_API_KEY": "sk-1"}).upstream == "openai"
    aliased = load_settings([], {"LLM_BASE_URL": "http://127.0.0.1:1/v1", "LLM_API_KEY": "k"})
    assert aliased.upstream == "openai" and aliased.base_url == "http://127.0.0.1:1/v1" and aliased.api_key == "k"
    assert load_settings(["--upstream", "offline"], {"OPENAI_API_KEY": "sk-1"}).upstream == "offline"


def test_flags_win_over_environment():
    settings = load_settings(["--port", "9001", "--host", "0.0.0.0"], {"PORT": "9000", "HOST": "127.0.0.1"})
    assert (settings.host, settings.port) == ("0.0.0.0", 9001)
    assert load_settings([], {"PORT": "9000"}).port == 9000


def test_bad_values_from_the_environment_are_refused_too(capsys):
    with pytest.raises(SystemExit):
        load_settings([], {"RAG_TOP_K": "-3"})
    assert "--rag-top-k" in capsys.readouterr().err


def test_api_keys_and_waiting_messages_are_lists():
    settings = load_settings([], {"API_KEYS": "a, b,,c", "RAG_WAITING_MESSAGES": "One moment|Hold on"})
    assert settings.api_keys == ("a", "b", "c")
    assert settings.waiting_messages == ("One moment", "Hold on")


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "x"],
        ["--port", "70000"],
        ["--upstream", "claude"],
        ["--audio-pace", "fast"],
        ["--audio-pace", "inf"],
        ["--max-body-bytes", "0"],
        ["--first-token-timeout", "0"],
        ["--upstream-retries", "-1"],
        ["--rag-top-k", "0"],
        ["--rag-min-relevance", "-0.1"],
        ["--rag-min-relevance", "1.5"],
        ["--audio-max-seconds", "nan-ish"],
    ],
)
def test_bad_values_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_settings(argv, {})
    assert exit_info.value.code == 2
    # Refused for its value, naming the flag: an unknown flag is refused too, but then the case tests nothing.
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"error: argument {argv[0]}:" in error, error


def test_keys_are_not_in_the_repr():
    settings = load_settings([], {"OPENAI_API_KEY": "sk-secret", "API_KEYS": "k-secret", "ADMIN_TOKEN": "t-secret"})
    assert "secret" not in repr(settings)


def test_credentials_in_the_base_url_are_never_shown():
    from llmserver.upstream.openai_upstream import redact_url

    assert redact_url("https://user:secret@llm.example:8443/v1") == "https://llm.example:8443/v1"
    assert redact_url("http://127.0.0.1:11434/v1") == "http://127.0.0.1:11434/v1"


def test_the_readme_lists_every_setting():
    import dataclasses
    from pathlib import Path

    from llmserver.settings import Settings, _flag

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("## Settings") :]
    for setting in dataclasses.fields(Settings):
        for name in setting.metadata["env"]:
            assert f"`{name}`" in table, f"{name} is missing from the README's settings table"
        flag = _flag(setting)
        if flag:
            assert f"`{flag}`" in table, f"{flag} is missing from the README's settings table"


def test_help_names_each_settings_environment_variable_and_default(capsys):
    with pytest.raises(SystemExit):
        load_settings(["--help"], environ={})
    text = " ".join(capsys.readouterr().out.split())
    assert "(env PORT; default 8000)" in text
    assert "(env MAX_STREAMS; default 1000)" in text
    assert "env REDIS_URL)" in text  # no default to show
