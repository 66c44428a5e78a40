"""The Dockerfile and docs/deployment.md, checked without Docker.

The Dockerfile is parsed here (instructions, continuation lines, comments, exec-form JSON): its base
image must be the official PyTorch runtime image of the torch that pyproject.toml pins, its RUN steps
must be plausible, and every file it copies must be in the build context that .dockerignore leaves.
Every segkn command of docs/deployment.md (in `docker run` lines or run directly) goes through the real
argument parser of segkn.cli, and its flags must be listed, spelled out, in `segkn <sub> --help`. The
ONNX Runtime snippet of the page must pre-process as segkn does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from unittest import mock

import numpy as np
import pytest

from segkn import cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
IMAGE = "segkn"  # the tag docs/deployment.md builds: docker build -t segkn .

# ----------------------------------------------------------------------------------------------------------
# A Dockerfile parser: enough of the syntax for this project, strict about the rest


class DockerfileError(ValueError):
    """A Dockerfile this parser cannot read."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the instruction, continuation lines joined
    line: int  # where it starts, 1-based

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (RUN/CMD/ENTRYPOINT [...]), None for shell form."""
        try:
            value = json.loads(self.args) if self.args.startswith("[") else None
        except json.JSONDecodeError:
            return None  # Docker runs an invalid JSON array as a shell command
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """Leading --flag=value options (COPY --chown=..., FROM --platform=...) and the other words."""
        words, flags = self.args.split(), {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments and blank lines dropped, continuation lines joined."""
    lines, escape, start = text.splitlines(), "\\", 0
    while start < len(lines):  # parser directives (# syntax=..., # escape=...) come first
        directive = re.fullmatch(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*", lines[start])
        if not directive:
            break
        escape = directive.group(2) if directive.group(1).lower() == "escape" else escape
        start += 1
    instructions: list[Instruction] = []
    pieces: list[str] = []
    first = 0
    for number, line in enumerate(lines[start:], start + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # blank and comment lines are dropped, also inside a continued instruction
        first = number if not pieces else first
        body = line.rstrip()
        if body.endswith(escape):
            pieces.append(body[: -len(escape)])
            continue
        keyword, *rest = "".join([*pieces, body]).strip().split(None, 1)
        pieces, args = [], (rest[0] if rest else "")
        if not re.fullmatch(r"[A-Za-z]+", keyword):
            raise DockerfileError(f"line {first}: expected an instruction, got {keyword!r}")
        if re.search(r"<<-?[\"']?[A-Za-z_]\w*[\"']?\s*$", args):
            raise DockerfileError(f"line {first}: heredocs are not supported by this parser")
        instructions.append(Instruction(keyword.upper(), args.strip(), first))
    if pieces:
        raise DockerfileError(f"line {first}: the last instruction ends with a line continuation")
    return instructions


def base_image(instructions: list[Instruction]) -> str:
    """The image of the first FROM, with the defaults of the ARGs declared before it substituted."""
    variables: dict[str, str] = {}

    def expand(match: re.Match) -> str:  # $NAME, ${NAME}, ${NAME:-default}
        value = variables.get(match.group(1) or match.group(2) or match.group(4), "")
        return value or (match.group(3) or "")

    for ins in instructions:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            variables[name.strip()] = default.strip().strip('"')
        elif ins.keyword == "FROM":
            return re.sub(r"\$\{(\w+)\}|\$\{(\w+):-([^}]*)\}|\$(\w+)", expand, ins.flags_and_words()[1][0])
    raise DockerfileError("no FROM instruction")


def split_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell line (split at ; && || | &), without leading VAR=value words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    command: list[str] = []
    for word in [*lexer, ";"]:
        if word not in (";", "&&", "||", "|", "&"):
            command.append(word)
            continue
        while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
            command = command[1:]
        if command:
            yield command
        command = []


# ----------------------------------------------------------------------------------------------------------
# .dockerignore: which files of the checkout go into the build context


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax: * and ? within one path element, ** across elements, [...] classes."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def read_dockerignore(path: Path) -> list[tuple[bool, re.Pattern]]:
    """(exception, pattern) pairs in file order; an exception (`!pattern`) puts paths back."""
    lines = [line.strip() for line in path.read_text().splitlines()] if path.is_file() else []
    return [
        (line.startswith("!"), _pattern_regex(line.lstrip("!").strip().strip("/")))
        for line in lines
        if line and not line.startswith("#")
    ]


def in_context(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether a path is sent: the last rule that matches it or a folder above it decides, as in Docker."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for exception, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = exception
    return included


def context_files(root: Path) -> list[str]:
    """The files of the build context: everything below root that .dockerignore lets through."""
    rules = read_dockerignore(root / ".dockerignore")
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if relative.split("/")[0] in (".git", ".venv"):
            continue  # left out by .dockerignore too; skipping them keeps the walk short
        if path.is_file() and in_context(relative, rules):
            files.append(relative)
    return files


# ----------------------------------------------------------------------------------------------------------
# segkn commands, through the real parser of segkn.cli


class _Parsed(Exception):
    pass


def parser_error(argv: list[str]) -> str | None:
    """None when segkn.cli's own argument parser accepts argv, else its error message.

    ``segkn.cli.main`` runs with ``ArgumentParser.parse_args`` wrapped to stop right after parsing: the
    command itself never runs.
    """
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        parse_args(self, args, namespace)
        raise _Parsed

    err = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
    ):
        try:
            cli.main(argv)
        except _Parsed:
            return None
        except SystemExit as exit_:
            lines = err.getvalue().strip().splitlines() or [f"exit status {exit_.code}"]
            return None if exit_.code in (0, None) else lines[-1]  # argparse's "error: ..." line
    return "segkn.cli.main returned without parsing its arguments"


@functools.lru_cache
def help_text(*argv: str) -> str:
    """What `segkn <argv> --help` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
    return out.getvalue()


_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def segkn_command_error(argv: list[str]) -> str | None:
    """Why `segkn argv` is not a command the current CLI accepts, or None when it is."""
    error = parser_error(argv)
    if error is not None:
        return error
    subcommands = re.search(r"\{([\w,-]+)\}", help_text()).group(1).split(",")
    sub = [a for a in argv if not a.startswith("-")][:1]
    sub = sub if sub and sub[0] in subcommands else []
    listed = set(_FLAG.findall(help_text())) | set(_FLAG.findall(help_text(*sub) if sub else ""))
    for arg in argv[: argv.index("--") if "--" in argv else None]:
        flag = arg.split("=", 1)[0]
        if _FLAG.fullmatch(flag) and flag not in listed:
            # argparse also takes unambiguous abbreviations; documented commands spell flags out
            return f"{flag} is not listed in `segkn {' '.join(sub)} --help`"
    return None


def tool_subcommand(script: str) -> str:
    """The subcommand a tools/*.py wrapper runs: it calls main(["<sub>", *sys.argv[1:]])."""
    path = ROOT / script
    match = re.search(r"main\(\s*\[\s*[\"'](\w+)[\"']", path.read_text()) if path.is_file() else None
    if not match:
        raise ValueError(f"{script} is not a tools/ wrapper of segkn.cli.main")
    return match.group(1)


# options that take a value, and those that do not
_DOCKER_VALUE = {
    "-v", "--volume", "--mount", "-e", "--env", "--env-file", "--gpus", "--shm-size", "-u", "--user",
    "--entrypoint", "-w", "--workdir", "--name", "--ipc", "--network", "--net", "-p", "--publish",
    "--cpus", "-m", "--memory", "--device", "--runtime", "--ulimit", "--label", "--hostname",
}  # fmt: skip
_DOCKER_BOOL = {"--rm", "-i", "-t", "-it", "-ti", "-d", "--detach", "--init", "--interactive", "--tty",
                "--read-only", "--privileged"}  # fmt: skip
_TORCHRUN_VALUE = {
    "--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank", "--node-rank", "--master_addr",
    "--master-addr", "--master_port", "--master-port", "--rdzv_backend", "--rdzv-backend",
    "--rdzv_endpoint", "--rdzv-endpoint", "--rdzv_id", "--rdzv-id", "--max_restarts", "--max-restarts",
}  # fmt: skip
_TORCHRUN_BOOL = {"--standalone"}


@dataclass(frozen=True)
class DockerRun:
    options: dict[str, list[str]]  # docker run option -> its values, in order
    command: list[str]  # the words after the image name


def parse_docker_run(words: list[str], image: str = IMAGE) -> DockerRun:
    """Split `docker run [OPTIONS] IMAGE [ARG...]` at the image."""
    options: dict[str, list[str]] = {}
    i = 2
    while i < len(words):
        name, eq, value = words[i].partition("=")
        if name in _DOCKER_VALUE:
            if not eq:
                i += 1
                value = words[i] if i < len(words) else ""
            options.setdefault(name, []).append(value)
        elif words[i] in _DOCKER_BOOL:
            options.setdefault(words[i], [])
        elif words[i].startswith("-"):
            raise ValueError(f"docker run option {words[i]!r} is unknown to this check; add it to its table")
        elif words[i].split(":")[0] != image:
            raise ValueError(f"expected the image {image!r} after the docker run options, got {words[i]!r}")
        else:
            return DockerRun(options, words[i + 1 :])
        i += 1
    raise ValueError(f"no image in {' '.join(words)}")


def segkn_argv(words: list[str]) -> list[str] | None:
    """The argument list of segkn.cli.main that a command runs, or None when it runs another program.

    Understands `segkn ...`, `python tools/<x>.py ...`, `python -m segkn.cli ...`, and `torchrun [opts]`
    in front of either python form.
    """
    program, rest = (PurePosixPath(words[0]).name, words[1:]) if words else ("", [])
    if program == "segkn":
        return rest
    if program == "torchrun":
        i = 0
        while i < len(rest) and rest[i].startswith("-") and rest[i] not in ("-m", "--module"):
            name, eq, _ = rest[i].partition("=")
            if name not in _TORCHRUN_VALUE | _TORCHRUN_BOOL:
                raise ValueError(f"torchrun option {rest[i]!r} is unknown to this check; add it to its table")
            i += 2 if name in _TORCHRUN_VALUE and not eq else 1
        return segkn_argv(["python", *rest[i:]])
    if re.fullmatch(r"python(3(\.\d+)?)?", program):
        if rest[:2] in (["-m", "segkn.cli"], ["--module", "segkn.cli"]):
            return rest[2:]
        if rest[:2] == ["-m", "torch.distributed.run"]:
            return segkn_argv(["torchrun", *rest[2:]])
        if rest and re.fullmatch(r"(\./)?tools/\w+\.py", rest[0]):
            return [tool_subcommand(rest[0].removeprefix("./")), *rest[1:]]
    return None


def shell_commands(markdown: str) -> Iterator[tuple[int, list[str]]]:
    """(line, words) of every simple command in the shell code blocks of a Markdown text."""
    fenced = shell = False
    text, first = "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            fenced, shell = not fenced, fence.group(1) in ("", "bash", "sh", "shell", "console")
            continue
        if not (fenced and shell):
            continue
        first = number if not text else first
        stripped = line.strip().removeprefix("$ ")
        if stripped.endswith("\\"):
            text += stripped[:-1] + " "
            continue
        for command in split_commands(text + stripped):
            yield first, command
        text = ""


def doc_command_errors(markdown: str, entrypoint: list[str]) -> tuple[list[str], list[str]]:
    """(errors, checked): why segkn commands of the Markdown fail, and the argument lists checked."""
    errors, checked = [], []
    for line, words in shell_commands(markdown):
        try:
            if words[:2] == ["docker", "run"]:
                run = parse_docker_run(words)
                argv = segkn_argv([*(run.options.get("--entrypoint", [])[-1:] or entrypoint), *run.command])
            else:
                argv = None if words[0] == "docker" else segkn_argv(words)
        except ValueError as err:
            errors.append(f"line {line}: {err}")
            continue
        if argv is None:
            continue  # docker build, another program, python my_script.py, ...
        checked.append(" ".join(argv))
        error = segkn_command_error(argv)
        if error:
            errors.append(f"line {line}: segkn {' '.join(argv)}\n    {error}")
    return errors, checked


# ----------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(project: dict) -> dict[str, str]:
    pins = [re.fullmatch(r"([\w.-]+)\s*==\s*([^;\s]+)", r.strip()) for r in project["dependencies"]]
    return {m.group(1).lower(): m.group(2) for m in pins if m}


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _entrypoint(instructions: list[Instruction]) -> list[str]:
    entry = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entry and entry[-1].exec_form, "the Dockerfile needs an exec-form (JSON array) ENTRYPOINT"
    return entry[-1].exec_form


def _volumes(instructions: list[Instruction]) -> list[str]:
    return [v for i in instructions if i.keyword == "VOLUME" for v in (i.exec_form or i.args.split())]


# ----------------------------------------------------------------------------------------------------------
# The helpers themselves


def test_parser_reads_continuations_comments_and_exec_form():
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=img:1\n"
        "FROM ${BASE} AS base\n"
        "# a comment\n"
        "RUN a \\\n"
        "    # a comment inside the continuation\n"
        "\n"
        " && b\n"
        'ENTRYPOINT ["segkn", "a b"]\n'
        "CMD segkn --help\n"
    )
    parsed = parse_dockerfile(text)
    assert [i.keyword for i in parsed] == ["ARG", "FROM", "RUN", "ENTRYPOINT", "CMD"]
    assert parsed[2].args == "a  && b" and parsed[2].line == 5
    assert list(split_commands(parsed[2].args)) == [["a"], ["b"]]
    assert parsed[3].exec_form == ["segkn", "a b"] and parsed[4].exec_form is None
    assert base_image(parsed) == "img:1"
    with pytest.raises(DockerfileError, match="continuation"):
        parse_dockerfile("FROM a\nRUN b \\\n")
    with pytest.raises(DockerfileError, match="heredoc"):
        parse_dockerfile("FROM a\nRUN <<EOF\necho\nEOF\n")


def test_dockerignore_rules():
    rules = [(False, _pattern_regex("*")), (True, _pattern_regex("segkn")),
             (False, _pattern_regex("**/__pycache__"))]  # fmt: skip
    assert in_context("segkn/nn/knconv.py", rules)
    assert not in_context("segkn/nn/__pycache__/knconv.pyc", rules)
    assert not in_context("runs/x/best.pth", rules) and not in_context("setup.cfg", rules)


def test_checker_catches_a_made_up_flag_and_passes_good_commands():
    def check(text: str) -> tuple[list[str], list[str]]:
        return doc_command_errors(f"```bash\n{text}\n```\n", ["segkn"])

    good = "docker run --rm --gpus all -v /d:/workspace/data:ro segkn train configs/x.yaml --set a=1"
    assert check(good) == ([], ["train configs/x.yaml --set a=1"])
    errors, _ = check("docker run --rm segkn train configs/x.yaml --made-up-flag 3")
    assert len(errors) == 1 and "--made-up-flag" in errors[0]
    errors, _ = check("docker run --rm segkn train configs/x.yaml --run runs/x")  # abbreviates --run-dir
    assert len(errors) == 1 and "--run is not listed" in errors[0]
    errors, _ = check(
        "docker run --entrypoint torchrun segkn --nproc_per_node 2 tools/train.py c.yaml --nope"
    )
    assert len(errors) == 1 and "--nope" in errors[0]
    errors, _ = check("docker run --bogus segkn train c.yaml")
    assert len(errors) == 1 and "--bogus" in errors[0]
    errors, _ = check("mkdir -p runs && segkn trian c.yaml")
    assert len(errors) == 1 and "invalid choice" in errors[0]
    # a continued line with a comment, and a block in another language, which is not read
    text = "```bash\nsegkn train c.yaml \\\n  --stop-at 5  # a comment\n```\n```python\nsegkn --nope\n```\n"
    assert doc_command_errors(text, ["segkn"]) == ([], ["train c.yaml --stop-at 5"])


# ----------------------------------------------------------------------------------------------------------
# The Dockerfile


def test_base_image_is_the_official_runtime_image_of_the_pinned_torch(instructions, project):
    image = base_image(instructions)
    tag = re.fullmatch(
        r"(?:docker\.io/)?pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime", image
    )
    assert tag, f"first FROM is {image!r}, expected pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-runtime"
    pin = _pins(project).get("torch")
    assert pin, "pyproject.toml must pin torch with == (the image's torch has to satisfy it)"
    assert tag.group(1) == pin, f"the base image has torch {tag.group(1)}, pyproject.toml pins {pin}"
    assert sum(i.keyword == "FROM" for i in instructions) == 1, "one stage: the runtime image itself"


_KNOWN_PROGRAMS = {"python", "python3", "segkn", "test", "echo", "rm", "mkdir", "chown", "chmod", "useradd",
                   "groupadd", "ln", "cp", "apt-get"}  # fmt: skip
_PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-t", "--target", "--prefix", "--root"}
_PIP_FORBIDDEN = {"--no-deps", "--force-reinstall", "-I", "--ignore-installed", "-e", "--editable", "-i",
                  "--index-url", "--extra-index-url", "--pre", "--upgrade-strategy"}  # fmt: skip


def _copied(instructions: list[Instruction]) -> dict[str, str]:
    """Image path -> context path of everything COPY takes from the build context."""
    copied, workdir = {}, PurePosixPath("/")
    for ins in instructions:
        workdir = workdir / ins.args if ins.keyword == "WORKDIR" else workdir
        flags, words = ins.flags_and_words()
        if ins.keyword == "COPY" and "from" not in flags:
            *sources, dest = words
            into = dest.endswith("/") or len(sources) > 1
            copied |= {
                str(workdir / dest / PurePosixPath(s).name if into else workdir / dest): s for s in sources
            }
    return copied


def test_run_steps_are_plausible_and_install_the_pinned_project(instructions, project):
    pins, copied, installs = _pins(project), _copied(instructions), 0
    assert not [i for i in instructions if i.keyword == "ADD"], "use COPY: ADD fetches URLs and unpacks"
    for ins in (i for i in instructions if i.keyword == "RUN"):
        assert ins.exec_form is None, f"line {ins.line}: write RUN in shell form"
        for command in split_commands(ins.args):
            assert command[0] in _KNOWN_PROGRAMS, f"line {ins.line}: unexpected {command[0]!r} in RUN"
            if command[:4] == ["python", "-m", "pip", "install"] or command[:2] == ["pip", "install"]:
                args = command[command.index("install") + 1 :]
            else:
                continue
            bad = [a for a in args if a.split("=")[0] in _PIP_FORBIDDEN]
            assert not bad, f"line {ins.line}: pip install {' '.join(bad)} may replace the image's torch"
            after_option = [False, *(a in _PIP_VALUE_OPTIONS for a in args[:-1])]
            targets = [
                a for a, value in zip(args, after_option, strict=True) if not a.startswith("-") and not value
            ]
            for target in targets:
                name = re.split(r"[<>=!~\[ ;]", target, maxsplit=1)[0].lower()
                if name in ("torch", "torchvision"):
                    assert target == f"{name}=={pins[name]}", f"line {ins.line}: {target!r} is not the pin"
                if target.startswith(("/", ".")):  # the project, from the files COPY put there
                    path, extras = re.fullmatch(r"([^\[]+)(?:\[([\w,-]+)\])?", target).groups()
                    folder = PurePosixPath(path)
                    assert copied.get(str(folder / "pyproject.toml")) == "pyproject.toml", target
                    assert copied.get(str(folder / "segkn")) == "segkn", target
                    assert ins.args.count("torch.__version__") >= 2 and "test " in ins.args, (
                        f"line {ins.line}: compare torch's version before and after the install"
                    )
                    # segkn eval's pictures and segkn plot need matplotlib: the viz extra, imported after
                    assert "viz" in (extras or "").split(","), f"line {ins.line}: install {path}[viz]"
                    viz = project["optional-dependencies"]["viz"]
                    assert any(r.startswith("matplotlib") for r in viz), "the viz extra is matplotlib"
                    assert re.search(r"python -c \"import [^\"]*\bmatplotlib\b", ins.args), (
                        f"line {ins.line}: the install check imports matplotlib"
                    )
                    installs += 1
    assert installs == 1, "exactly one RUN pip-installs the project (with its pins)"


def test_copied_files_are_in_the_build_context(instructions):
    files = context_files(ROOT)
    for ins in (i for i in instructions if i.keyword == "COPY"):
        for source in ins.flags_and_words()[1][:-1]:
            assert (ROOT / source).exists(), f"line {ins.line}: COPY {source}: not in the checkout"
            sent = [f for f in files if f == source or f.startswith(source.rstrip("/") + "/")]
            assert sent, f"line {ins.line}: COPY {source}: .dockerignore leaves it out of the build context"
    assert not [f for f in files if f.split("/")[0] in ("runs", "data", "weights", "tests")]
    size = sum((ROOT / f).stat().st_size for f in files)
    assert size < 20 * 2**20, f"a build context of {size / 2**20:.0f} MiB: check .dockerignore"


def test_entrypoint_is_a_console_script_and_cmd_parses(instructions, project):
    entry = _entrypoint(instructions)
    assert entry[0] in project["scripts"], f"ENTRYPOINT {entry[0]!r} is not in [project.scripts]"
    cmd = [i for i in instructions if i.keyword == "CMD"]
    if cmd:
        assert cmd[-1].exec_form is not None, f"line {cmd[-1].line}: write CMD as a JSON array"
        argv = segkn_argv([*entry, *cmd[-1].exec_form])
        assert argv is not None and segkn_command_error(argv) is None


def test_runs_as_a_user_in_a_workdir_with_volumes_and_a_thread_default(instructions):
    users = [i.args.split(":")[0] for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    created = [c[-1] for i in instructions if i.keyword == "RUN" for c in split_commands(i.args)
               if c[0] == "useradd"]  # fmt: skip
    assert users[-1] in created, f"USER {users[-1]} is never created"
    workdirs = [i.args for i in instructions if i.keyword == "WORKDIR"]
    assert workdirs and workdirs[-1].startswith("/")
    assert {PurePosixPath(v).name for v in _volumes(instructions)} >= {"data", "runs"}
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    threads = re.search(r"\bOMP_NUM_THREADS=(\d+)", env)
    assert threads and int(threads.group(1)) >= 1, "set a default OMP_NUM_THREADS"


# ----------------------------------------------------------------------------------------------------------
# docs/deployment.md


def test_deployment_commands_parse_with_the_current_cli(instructions):
    errors, checked = doc_command_errors(DEPLOYMENT.read_text(), _entrypoint(instructions))
    assert not errors, "docs/deployment.md:\n" + "\n".join(errors)
    subs = {argv.split()[0] for argv in checked if argv}
    assert {"train", "eval", "infer", "export"} <= subs, f"docs/deployment.md runs only {sorted(subs)}"


def test_deployment_docker_runs_mount_the_image_volumes(instructions):
    targets = set()
    for _, words in shell_commands(DEPLOYMENT.read_text()):
        if words[:2] == ["docker", "run"]:
            options = parse_docker_run(words).options
            targets |= {v.split(":")[1] for v in options.get("-v", []) + options.get("--volume", [])}
    unmounted = [
        v for v in _volumes(instructions) if not any(t == v or t.startswith(v + "/") for t in targets)
    ]
    assert not unmounted, f"no docker run in docs/deployment.md mounts anything at {unmounted}"


def _onnx_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DEPLOYMENT.read_text(), re.S)
    snippets = [b for b in blocks if "onnxruntime" in b]
    assert len(snippets) == 1, "docs/deployment.md has one Python snippet that uses onnxruntime"
    return snippets[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")  # CPU onnxruntime here
@pytest.mark.parametrize("normalize", ["none", "imagenet"])
def test_onnx_snippet_preprocesses_as_segkn(tmp_path, monkeypatch, one_thread, normalize):
    """The snippet, run on a real export, feeds what image_to_tensor makes and writes its argmax."""
    import onnxruntime as ort
    from PIL import Image

    from segkn.data.io import read_image
    from segkn.data.transforms import image_to_tensor
    from tests.inference.conftest import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth", data={"normalize": normalize})
    export = ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "model.onnx"), "--no-verify"]
    assert cli.main(export) == 0
    rgb = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "image.png")

    feeds = []

    class Recording(ort.InferenceSession):
        def run(self, output_names, input_feed, run_options=None):
            feeds.append(dict(input_feed))
            return super().run(output_names, input_feed, run_options)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    monkeypatch.chdir(tmp_path)
    exec(compile(_onnx_snippet(), str(DEPLOYMENT), "exec"), {})

    (fed,) = feeds[0].values()
    expected = image_to_tensor(read_image(tmp_path / "image.png"), normalize).numpy()[None]
    assert fed.dtype == np.float32 and fed.shape == (1, 3, 37, 45)
    np.testing.assert_allclose(fed, expected, rtol=0, atol=1e-5)
    session = Recording(str(tmp_path / "model.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: expected})[0]
    label = np.asarray(Image.open(tmp_path / "label.png"))
    assert label.shape == (37, 45) and (label == logits[0].argmax(0)).mean() > 0.999
    meta = session.get_modelmeta().custom_metadata_map
    palette = np.array(json.loads(meta["segkn.palette"]), np.uint8)
    assert (np.asarray(Image.open(tmp_path / "color.png")) == palette[label]).all()
    documented = set(re.findall(r"^\| `(segkn\.\w+)` \|", DEPLOYMENT.read_text(), re.M))
    assert documented == {k for k in meta if k.startswith("segkn.")}, "the metadata table of the docs"
