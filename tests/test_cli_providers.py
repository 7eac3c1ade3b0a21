"""`--provider PREFIX=MODULE:NAME`: a model client of one's own from the command line (`run`,
`run --from`, `run --inputs`, `resume`), as `providers=` is from Python.

Each command is a real subprocess; the client is a module of the kind a user writes, in the
folder the command runs in, imported as the real `eclflow` script imports it (`python -P`: the
current folder is not on sys.path unless eclflow puts it there).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOW = """\
eclflow: 1
id: own-cli
model: myco/small
inputs: {type: object, properties: {topic: {type: string}}}
steps:
  - {id: first, type: llm, template: "first {{ topic }}", with: {topic: "{{ input.topic }}"}}
  - {id: second, type: llm, template: "second", depends_on: [first]}
output: {text: "{{ steps.second.output.text }}"}
"""

CLIENT = '''\
import eclflow


class Shouter:
    """Answers with its prompt in capitals; `fails` fails the step it names."""

    def __init__(self, fails=None):
        self.fails = fails

    async def complete(self, request):
        if request.step_id == self.fails:
            raise eclflow.LLMError("down", retryable=False)
        text = request.messages[-1].content.upper()
        return eclflow.CompletionResponse(text, usage=eclflow.TokenUsage(3, 2), cost=0.5)


client = Shouter()
failing = Shouter(fails="second")
NUMBER = 7
'''


def eclflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    return subprocess.run(
        [sys.executable, "-P", "-m", "eclflow", *args, "--db", url],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "myco_client.py").write_text(CLIENT)
    (tmp_path / "broken.py").write_text("raise RuntimeError('no MYCO_KEY\\nset it')\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit('set MYCO_KEY first')\n")
    return tmp_path


def test_run_resume_and_run_from_take_a_provider_of_ones_own(folder: Path) -> None:
    """`myco/small` went to litellm from the command line (no such provider), and a run
    started from Python with `providers=` could be resumed only from Python."""
    given = ("--provider", "myco=myco_client:failing")
    failed = eclflow(folder, "run", "wf.yaml", "-i", "topic=tides", "--json", *given)
    assert failed.returncode == 1, failed.stderr
    run = json.loads(failed.stdout)
    assert (run["status"], run["failed_step"]) == ("failed", "second")
    done = eclflow(
        folder, "resume", run["run_id"], "--json", "--provider", "myco=myco_client:client"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == {"text": "SECOND"}
    again = eclflow(
        folder, "run", "wf.yaml", "--from", "second", "--run", run["run_id"], "--json",
        "--provider", "myco/=myco_client:client",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["output"] == {"text": "SECOND"}


def test_run_from_a_run_of_ones_own_provider_without_it_says_to_give_it(folder: Path) -> None:
    """`run --from` of a run started with --provider, not given it again, said "model
    'myco/small' names no provider litellm knows: write it as 'provider/model'", though the
    name is right and the provider is what is missing (resume says so already)."""
    given = ("--provider", "myco=myco_client:failing")
    failed = eclflow(folder, "run", "wf.yaml", "-i", "topic=tides", "--json", *given)
    run_id = json.loads(failed.stdout)["run_id"]
    again = eclflow(folder, "run", "wf.yaml", "--from", "second", "--run", run_id)
    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr == (
        f"error: Configuration error: run {run_id[:8]} calls myco/small through a provider of "
        "your own (providers={'myco': …}): give it again, --provider myco=MODULE:NAME\n"
    )


def test_a_batch_takes_a_provider_of_ones_own(folder: Path) -> None:
    (folder / "items.jsonl").write_text('{"topic": "a"}\n{"topic": "b"}\n')
    done = eclflow(
        folder, "run", "wf.yaml", "--inputs", "items.jsonl", "-q",
        "--provider", "myco=myco_client:client",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["status"] for line in done.stdout.splitlines()] == ["completed"] * 2


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("myco", "--provider myco: write PREFIX=MODULE:NAME, such as myco=myco_client:client "
                 "(the object `client` of myco_client.py) for the models myco/…"),
        ("myco=myco_client", "--provider myco=myco_client: write PREFIX=MODULE:NAME"),
        ("myco=nosuch:client", "--provider myco=nosuch:client: no module nosuch in the current "
                               "folder or on PYTHONPATH"),
        ("myco=broken:client", "--provider myco=broken:client: importing broken failed: "
                               "RuntimeError: no MYCO_KEY set it"),
        ("myco=myco_client:nothing", "--provider myco=myco_client:nothing: myco_client has no "
                                     "nothing"),
        # a file's path where a module's name goes: "no module myco_client.py in the current
        # folder", which holds it, and for ./myco_client.py a TypeError about relative imports
        ("myco=myco_client.py:client", "--provider myco=myco_client.py:client: MODULE is a "
                                       "module's name, as Python's import takes it: "
                                       "myco=myco_client:client"),
        ("myco=./myco_client.py:client", "--provider myco=./myco_client.py:client: MODULE is a "
                                         "module's name, as Python's import takes it: "
                                         "myco=myco_client:client"),
        ("myco=lib/myco_client:client", "--provider myco=lib/myco_client:client: MODULE is a "
                                        "module's name, as Python's import takes it: "
                                        "myco=lib.myco_client:client"),
        # a module that exits as it is imported (sys.exit("set MYCO_KEY")): was that text alone,
        # exit 1, as if the run had failed
        ("myco=exits:client", "--provider myco=exits:client: importing exits failed: "
                              "SystemExit: set MYCO_KEY first"),
        ("myco=myco_client:Shouter", "--provider myco=myco_client:Shouter: Shouter is a class: "
                                     "name an object of it (client = Shouter(…) in myco_client, "
                                     "then myco=myco_client:client)"),
        ("myco=myco_client:NUMBER", "--provider myco=myco_client:NUMBER: NUMBER is an int, not "
                                    "a model client: it has no `async def complete(self, "
                                    "request)` (see eclflow.Provider)"),
        ("mock=myco_client:client", "--provider mock=myco_client:client: mock/… are "
                                    "eclflow's own models (`mock/…` plays --mock-responses, "
                                    "`local/…` runs in this process): give your provider "
                                    "another prefix"),
    ],
)  # fmt: skip
def test_a_provider_that_cannot_be_had_is_one_line_before_the_run(
    folder: Path, spec: str, says: str
) -> None:
    done = eclflow(folder, "run", "wf.yaml", "-i", "topic=t", "--provider", spec)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"error: Configuration error: {says}"), done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not (folder / "runs.db").exists()  # (refused before the journal was opened)


def test_the_same_prefix_twice_is_refused(folder: Path) -> None:
    done = eclflow(
        folder, "run", "wf.yaml", "-i", "topic=t",
        "--provider", "myco=myco_client:client", "--provider", "myco/=myco_client:failing",
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (
        2,
        "error: Configuration error: --provider myco/=myco_client:failing: the prefix myco is "
        "given twice\n",
    )
