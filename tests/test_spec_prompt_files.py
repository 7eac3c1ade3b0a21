"""Where a `prompt:` file may be (E403) and how large it may be (E401).

A workflow file may come from someone else: `prompt: /home/me/.ssh/id_rsa` or
`prompt: ../../.env` made eclflow read that file and send it to the model. A prompt file must
be inside the workflow file's folder (links followed); eclflow's own templates are allowed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from eclflow.errors import WorkflowInvalid
from eclflow.spec import check, check_text, load

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-token-do-not-send"
MAX_PROMPT_BYTES = 2**20  # the documented limit (docs/format.md, E401)


def workflow(folder: Path, prompt: str) -> Path:
    """A one-step workflow in `folder` whose template step reads `prompt`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "w.yaml"
    path.write_text(
        "eclflow: 1\nid: w\nsteps:\n"
        f"  - id: a\n    type: template\n    prompt: {json.dumps(prompt)}\n"
        "    with: {topic: '{{ input.topic }}'}\n"
    )
    return path


def secret(tmp_path: Path) -> Path:
    f = tmp_path / "secret.txt"
    f.write_text(f"{SECRET} {{{{ topic }}}}\n")
    return f


def codes(path: Path) -> list[str]:
    return [d.code for d in check(path)[1]]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "eclflow", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


# --- E403: outside the workflow file's folder ---------------------------------------------------


def test_an_absolute_prompt_path_outside_the_folder_is_e403_at_the_prompt_value(
    tmp_path: Path,
) -> None:
    target = secret(tmp_path)
    path = workflow(tmp_path / "wf", str(target))
    (d,) = check(path)[1]
    assert d.code == "E403" and d.severity == "error"
    assert (d.location.file, d.location.line, d.location.col) == (str(path), 6, 13)
    assert d.message == (
        f"prompt file {str(target)!r} is outside the workflow file's folder "
        f"{str((tmp_path / 'wf').resolve())!r}"
    )
    assert d.hint is not None and "next to the workflow file" in d.hint


@pytest.mark.parametrize(
    "prompt", ["../secret.txt", "./../secret.txt", "sub/../../secret.txt", "../nothing-here.j2"]
)
def test_a_relative_prompt_path_leading_out_is_e403(tmp_path: Path, prompt: str) -> None:
    secret(tmp_path)
    (tmp_path / "wf" / "sub").mkdir(parents=True)
    assert codes(workflow(tmp_path / "wf", prompt)) == ["E403"]


def test_a_home_prompt_path_is_e403(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    monkeypatch.setenv("HOME", str(home))
    assert codes(workflow(tmp_path / "wf", "~/.ssh/id_rsa")) == ["E403"]


def test_a_link_beside_the_workflow_leading_out_is_e403(tmp_path: Path) -> None:
    """A workflow received as a folder (an archive, a repository) may hold a link."""
    target = secret(tmp_path)
    path = workflow(tmp_path / "wf", "p.j2")
    (tmp_path / "wf" / "p.j2").symlink_to(target)
    (d,) = check(path)[1]
    assert d.code == "E403" and d.message.endswith("(a link leads out of it)"), d.message
    # a folder under it that is a link out of it, likewise
    (tmp_path / "wf" / "prompts").symlink_to(tmp_path)
    assert codes(workflow(tmp_path / "wf", "prompts/secret.txt")) == ["E403"]


@pytest.mark.parametrize(
    "prompt", ["p.j2", "./p.j2", "prompts/q.j2", "prompts/../p.j2", "inner.j2", "ABSOLUTE"]
)
def test_prompt_files_inside_the_folder_stay_valid(tmp_path: Path, prompt: str) -> None:
    folder = tmp_path / "wf"
    (folder / "prompts").mkdir(parents=True)
    (folder / "p.j2").write_text("Say {{ topic }}")
    (folder / "prompts" / "q.j2").write_text("Say {{ topic }}")
    (folder / "inner.j2").symlink_to(folder / "prompts" / "q.j2")  # a link that stays inside
    if prompt == "ABSOLUTE":
        prompt = str(folder / "prompts" / "q.j2")
    path = workflow(folder, prompt)
    assert check(path)[1] == []


def test_the_bundled_templates_stay_valid_by_name_and_by_path(tmp_path: Path) -> None:
    # a bare name not found beside the workflow file: eclflow's own template
    path = workflow(tmp_path / "wf", "generate.j2")
    assert codes(path) == []
    # the repository's workflows/ reach them through the top-level templates/ link
    text = (ROOT / "workflows" / "critique_revise.yaml").read_text()
    text = text.replace("prompt: generate.j2", "prompt: ../templates/generate.j2")
    wf, diags = check_text(text, file="w.yaml", base_dir=ROOT / "workflows")
    assert wf is not None, [str(d) for d in diags]


def test_a_workflow_file_that_is_a_link_uses_the_folder_of_the_file_it_leads_to(
    tmp_path: Path,
) -> None:
    real = workflow(tmp_path / "real", "p.j2")
    (tmp_path / "real" / "p.j2").write_text("Say {{ topic }}")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.yaml").symlink_to(real)
    assert codes(tmp_path / "elsewhere" / "w.yaml") == []


def test_text_without_a_folder_keeps_its_prompts_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = secret(tmp_path)
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "p.j2").write_text("Say hello")
    monkeypatch.chdir(tmp_path / "cwd")
    text = "eclflow: 1\nid: w\nsteps:\n  - {id: a, type: template, prompt: PROMPT}\n"
    assert [d.code for d in check_text(text.replace("PROMPT", str(target)))[1]] == ["E403"]
    assert check_text(text.replace("PROMPT", "p.j2"))[1] == []


def test_e403_is_said_beside_an_unknown_key_and_a_duplicate_id(tmp_path: Path) -> None:
    """It does not depend on the file's shape: said with the other problems, in one pass."""
    secret(tmp_path)
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "w.yaml").write_text(
        "eclflow: 1\nid: w\ncolour: red\nsteps:\n"
        "  - {id: a, type: template, prompt: ../secret.txt}\n"
        "  - {id: a, type: template, template: x}\n"
    )
    assert sorted(codes(folder / "w.yaml")) == ["E111", "E201", "E403"]


def test_load_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        load(workflow(tmp_path / "wf", str(secret(tmp_path))))
    assert [d.code for d in caught.value.diagnostics] == ["E403"]


def test_run_refuses_it_and_reads_nothing(tmp_path: Path) -> None:
    """`eclflow run` refused it before any step: the secret is never read, never sent."""
    path = workflow(tmp_path / "wf", "../secret.txt")
    secret(tmp_path)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    r = cli("run", str(path), "-i", "topic=x", "--db", db, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    said = (r.stdout + r.stderr).strip().splitlines()
    assert f"{path}:6:13: E403 prompt file '../secret.txt' is outside" in said[0], said
    assert "Traceback" not in r.stderr and SECRET not in r.stdout + r.stderr
    r = cli("validate", str(path))
    assert r.returncode == 1 and "E403" in r.stdout, r.stdout + r.stderr


# --- the size of a prompt file ------------------------------------------------------------------


def test_a_prompt_file_over_the_limit_is_e401(tmp_path: Path) -> None:
    path = workflow(tmp_path / "wf", "p.j2")
    prompt = tmp_path / "wf" / "p.j2"
    prompt.write_text("{{ topic }}" + "a" * (MAX_PROMPT_BYTES - len("{{ topic }}")))
    assert codes(path) == []  # exactly at the limit
    with prompt.open("a") as f:
        f.write("a")
    (d,) = check(path)[1]
    assert d.code == "E401" and (d.location.line, d.location.col) == (6, 13)
    assert d.message == "prompt file 'p.j2' is too large: a prompt file may hold at most 1 MiB"


def test_a_huge_prompt_file_is_not_read_whole(tmp_path: Path) -> None:
    """A sparse 8 GiB file (no disk used) under a 1.5 GiB address-space limit: validate said
    E401 at once rather than reading it into memory."""
    path = workflow(tmp_path / "wf", "p.j2")
    with (tmp_path / "wf" / "p.j2").open("wb") as f:
        f.truncate(8 * 2**30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    limit = 1536 * 2**20

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "validate", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=bounded,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "E401 prompt file 'p.j2' is too large" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_a_prompt_file_grown_after_loading_fails_its_step_in_one_line(tmp_path: Path) -> None:
    """The run reads it again: one grown past the limit since (a file being rewritten) fails
    its step with a one-line reason, unread."""
    import asyncio

    from eclflow.engine import runner

    path = workflow(tmp_path / "wf", "p.j2")
    prompt = tmp_path / "wf" / "p.j2"
    prompt.write_text("Say {{ topic }}")
    wf = load(path)
    prompt.write_text("Say {{ topic }}" + "a" * MAX_PROMPT_BYTES)
    result = asyncio.run(runner.run(wf, {"topic": "x"}))
    assert result.status == "failed"
    assert result.error is not None
    assert "a prompt file may hold at most 1 MiB" in result.error, result.error
    assert "\n" not in result.error
