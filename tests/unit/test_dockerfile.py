"""The Dockerfile, read as text (no Docker engine here): what a deployment and a Hugging Face Space rely on.

Each check is a function over the parsed Dockerfile; `test_each_check_catches_its_mistake` feeds every one a broken
variant, so none of them can pass whatever the file says. hadolint runs too where it is installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
SETUP = "scripts/setup.sh"
APP_UID = 1000  # what Hugging Face Spaces run containers as
PORT = "7860"


class Instruction(NamedTuple):
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined
    line: int  # where it starts (1-based)


def parse(text: str) -> list[Instruction]:
    """Instructions with `\\` continuations joined; comment lines vanish, also inside a continued instruction."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        joined = " ".join(p for p in parts if p)
        parts = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not parts, "the Dockerfile ends inside a continued instruction"
    return instructions


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def exec_form(args: str) -> list[str] | None:
    """A JSON-array argument (`["python3", "app.py"]`) as a list, or None for the shell form."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
        return value
    return None


def env_values(instructions: list[Instruction], upto: int | None = None) -> dict[str, str]:
    """ENV as set before instruction index `upto` (all of them by default); both `k=v ...` and `k v` forms."""
    env: dict[str, str] = {}
    for instruction in instructions[:upto]:
        if instruction.keyword != "ENV":
            continue
        tokens = shlex.split(instruction.args)
        if tokens and "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
        else:
            for token in tokens:
                key, _, value = token.partition("=")
                env[key] = value
    return env


def flags_and_operands(args: str) -> tuple[dict[str, str], list[str]]:
    value = exec_form(args)
    tokens = value if value is not None else shlex.split(args)
    flags = {}
    while tokens and tokens[0].startswith("--"):
        key, _, flag_value = tokens[0][2:].partition("=")
        flags[key] = flag_value
        tokens = tokens[1:]
    return flags, tokens


def shell_commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN's shell form, split on `&&`, `||`, `;` and `|` (good enough for checks)."""
    commands = []
    for segment in re.split(r"&&|\|\||;|\|", run_args):
        try:
            tokens = shlex.split(segment)
        except ValueError:
            tokens = segment.split()
        while tokens and (tokens[0] in {"if", "then", "else", "elif", "do", "!"}  # shell keywords and
                          or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0])):  # VAR=value before a command
            tokens = tokens[1:]
        if tokens:
            commands.append(tokens)
    return commands


# --- .dockerignore ----------------------------------------------------------------------------------------------

def ignore_patterns(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rules, near enough: the last matching pattern wins, `!` re-includes, and a folder's match covers
    what is inside it."""
    path = path.strip("/")
    prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negated else pattern)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


# --- the checks -------------------------------------------------------------------------------------------------

BASE_IMAGE = re.compile(
    r"(?:(?:docker\.io|nvcr\.io)/)?nvidia/cuda:\d+\.\d+\.\d+-(?:cudnn\d*-)?runtime-ubuntu\d+\.\d+"
    r"(?:@sha256:[0-9a-f]{64})?"
)


def check_base_image(instructions: list[Instruction]) -> None:
    froms = of(instructions, "FROM")
    assert froms, "no FROM"
    assert instructions[0].keyword in {"FROM", "ARG"}, "the first instruction must be FROM"
    image = froms[-1].args.split()[0]  # the final stage is the image that runs
    assert "latest" not in image, f"unpinned base image {image}"
    assert BASE_IMAGE.fullmatch(image), f"{image} is not a pinned nvidia/cuda X.Y.Z runtime image on Ubuntu"


def resolve_uid(instructions: list[Instruction], user: str) -> int | None:
    name = user.split(":")[0]
    if name.isdigit():
        return int(name)
    if name == "root":
        return 0
    for run in of(instructions, "RUN"):
        for command in shell_commands(run.args):
            if command[0] != "useradd":
                continue
            uid = None
            for flag, value in zip(command, command[1:]):
                if flag in {"-u", "--uid"}:
                    uid = int(value)
            uid = next((int(t.split("=", 1)[1]) for t in command if t.startswith("--uid=")), uid)
            if command[-1] == name:
                return uid
    return None


def check_user(instructions: list[Instruction]) -> None:
    users = of(instructions, "USER")
    assert users, "no USER: the app would run as root"
    final = users[-1]
    assert final.args.split(":")[0] not in {"root", "0"}, "the final USER is root"
    uid = resolve_uid(instructions, final.args)
    assert uid == APP_UID, f"the final USER {final.args!r} is uid {uid}, not {APP_UID} (Spaces need {APP_UID})"
    cmds = of(instructions, "CMD")
    assert cmds and final.line < cmds[-1].line, "USER must come before CMD"
    # uid 1000 must really be free for it: Ubuntu 24.04 images have a user `ubuntu` with that uid.
    if "ubuntu24" in of(instructions, "FROM")[-1].args and not final.args.split(":")[0] == "ubuntu":
        commands = [c for run in of(instructions, "RUN") for c in shell_commands(run.args)]
        assert any(c[0] in {"userdel", "usermod"} and "ubuntu" in c for c in commands), (
            "Ubuntu 24.04 images already give uid 1000 to `ubuntu`: remove or rename it")


def setup_run_index(instructions: list[Instruction]) -> int:
    for index, instruction in enumerate(instructions):
        if instruction.keyword == "RUN" and any(
            len(c) >= 2 and c[0] == "bash" and c[1] == SETUP for c in shell_commands(instruction.args)
        ):
            return index
    raise AssertionError(f"no RUN runs `bash {SETUP}`, the README's install recipe")


def check_install_recipe(instructions: list[Instruction]) -> None:
    index = setup_run_index(instructions)
    command = next(c for c in shell_commands(instructions[index].args) if c[:2] == ["bash", SETUP])
    assert command[2:] in ([], ["app"]), f"the image installs the app target, not {command[2:]}"
    for run in of(instructions, "RUN"):
        for c in shell_commands(run.args):
            assert not ("pip" in c and "install" in c), (
                f"line {run.line}: pip install outside {SETUP}: the image must use the README's one recipe")
    earlier_users = [i for i in instructions[:index] if i.keyword == "USER"]
    assert not earlier_users or earlier_users[-1].args.split(":")[0] in {"root", "0"}, (
        f"{SETUP} apt-installs system packages: run it as root")
    # `python3` inside setup.sh must be a virtualenv's (Ubuntu 24.04's own refuses pip installs, PEP 668).
    venvs = [c[3] for i in instructions[:index] if i.keyword == "RUN"
             for c in shell_commands(i.args) if c[:3] == ["python3", "-m", "venv"] and len(c) > 3]
    assert venvs, f"no virtualenv is created before {SETUP} runs"
    path = env_values(instructions, index).get("PATH", "")
    assert path.split(":")[0] in {f"{v.rstrip('/')}/bin" for v in venvs}, (
        f"PATH={path!r} when {SETUP} runs: the virtualenv's bin must come first")
    copied = {src for c in of(instructions[:index], "COPY") for src in flags_and_operands(c.args)[1][:-1]}
    assert copied & {SETUP, "scripts", "scripts/", "."} and copied & {"requirements.txt", "."}, (
        f"{SETUP} and requirements.txt must be copied in before {SETUP} runs")
    assert copied & {"constraints.txt", "."}, (
        f"constraints.txt (the tested versions {SETUP} installs) must be copied in before {SETUP} runs")


def check_expose(instructions: list[Instruction]) -> None:
    ports = [p.split("/")[0] for e in of(instructions, "EXPOSE") for p in e.args.split()]
    assert PORT in ports, f"EXPOSE {PORT} missing (found {ports})"
    env = env_values(instructions)
    assert env.get("GRADIO_SERVER_PORT") == PORT and env.get("GRADIO_SERVER_NAME") == "0.0.0.0", (
        "Gradio must listen on 0.0.0.0:7860 in the container")


def check_healthcheck(instructions: list[Instruction]) -> None:
    checks = of(instructions, "HEALTHCHECK")
    assert checks, "no HEALTHCHECK"
    args = checks[-1].args
    assert not args.upper().startswith("NONE"), "HEALTHCHECK NONE"
    options, _, command = args.partition("CMD ")
    assert command, "HEALTHCHECK without CMD"
    assert "--start-period=" in options, "the app needs a start period (its imports take ~20 s)"
    argv = exec_form(command.strip())
    program = argv[0] if argv else shlex.split(command)[0]
    assert program in {"python3", "python"}, f"the health check runs {program!r}, a tool the image may lack"
    assert PORT in command, f"the health check does not ask port {PORT}"


def check_volumes(instructions: list[Instruction]) -> None:
    volumes = []
    for volume in of(instructions, "VOLUME"):
        volumes += exec_form(volume.args) or volume.args.split()
    env = env_values(instructions)
    assert "HF_HOME" in env, "HF_HOME is not set: the Hub cache would be lost with the container"
    assert "QUANT_KERNEL_CACHE" in env, "QUANT_KERNEL_CACHE is not set: compiled kernels would be rebuilt per container"
    caches = ["HF_HOME", "QUANT_KERNEL_CACHE", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR",
              "QUANT_OUTPUT_DIR"]
    for name in (n for n in caches if n in env):
        directory = env[name].rstrip("/")
        assert any(directory == v.rstrip("/") or directory.startswith(v.rstrip("/") + "/") for v in volumes), (
            f"{name}={directory} is in no VOLUME ({volumes})")
    runs = " ".join(r.args for r in of(instructions, "RUN"))
    for v in volumes:  # created (and given to the app user) in the image, or Docker makes it root's
        assert re.search(rf"chown\b[^&;]*\s{re.escape(v.rstrip('/'))}(?:/|\s|$)", runs), (
            f"VOLUME {v} is not created and chowned for the app user")


def check_cmd(instructions: list[Instruction]) -> None:
    cmds = of(instructions, "CMD")
    assert cmds, "no CMD"
    argv = exec_form(cmds[-1].args)
    assert argv is not None, "CMD in shell form: signals would go to /bin/sh, not the app"
    assert argv[0] in {"python3", "python"} and argv[1:] == ["app.py"], f"CMD {argv} does not run app.py"
    assert not of(instructions, "ENTRYPOINT"), "an ENTRYPOINT would wrap the CMD"


def check_copies(instructions: list[Instruction], root: Path, dockerignore: str) -> None:
    patterns = ignore_patterns(dockerignore)
    sources = []
    for copy in of(instructions, "COPY") + of(instructions, "ADD"):
        flags, operands = flags_and_operands(copy.args)
        if "from" in flags:
            continue
        assert len(operands) >= 2, f"line {copy.line}: COPY needs a source and a destination"
        sources += operands[:-1]
    assert sources, "nothing is copied into the image"
    for source in sources:
        assert not re.search(r"[*?\[]", source), f"COPY {source}: name files, no wildcards"
        assert (root / source).exists(), f"COPY {source}: not in the repository"
        if source not in {".", "./"}:
            assert not is_ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # What the app needs at run time must reach the image: the CMD's script, its tabs, the package and its demo models.
    needed = ["app.py", "ui/__init__.py", "quant/__init__.py", "quant/demo_models/tiny-llama-chat/model.safetensors"]
    for path in needed:
        assert (root / path).exists(), f"{path} missing from the repository"
        assert not is_ignored(path, patterns), f"{path} is excluded by .dockerignore"
        assert any(s in {".", "./"} or path == s.rstrip("/") or path.startswith(s.rstrip("/") + "/")
                   for s in sources), f"{path} is copied by no COPY"


def check_dockerignore(dockerignore: str) -> None:
    patterns = ignore_patterns(dockerignore)
    for path in [".git/HEAD", ".whl/x.whl", "quant/__pycache__/x.pyc", "logs/x.log", "outputs/m/x.safetensors"]:
        assert is_ignored(path, patterns), f".dockerignore lets {path} into the build context"


def check_readme_recipe(readme: str) -> None:
    section = re.search(r"^## Set up\n(.*?)(?=^## )", readme, flags=re.M | re.S)
    assert section, "README.md has no '## Set up' section"
    blocks = re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", section.group(1), flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    assert any(re.match(rf"bash {re.escape(SETUP)}(?:\s|&&|$)", c) and "test" not in c.split("&&")[0]
               for c in commands), f"README's set-up commands do not install the app with `bash {SETUP}`"


# --- the tests --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def test_parse_joins_continuations_and_drops_comments():
    parsed = parse("FROM a:1\n# c\nRUN one \\\n    # inside\n    && two\n\nCMD [\"x\"]\n")
    assert parsed == [Instruction("FROM", "a:1", 1), Instruction("RUN", "one && two", 3),
                      Instruction("CMD", '["x"]', 7)]


def test_base_image_is_a_pinned_cuda_runtime(instructions):
    check_base_image(instructions)


def test_install_is_the_readme_recipe(instructions):
    check_install_recipe(instructions)


def test_runs_as_uid_1000(instructions):
    check_user(instructions)


def test_exposes_the_gradio_port(instructions):
    check_expose(instructions)


def test_has_a_healthcheck(instructions):
    check_healthcheck(instructions)


def test_caches_are_in_a_volume(instructions):
    check_volumes(instructions)


def test_cmd_runs_the_app(instructions):
    check_cmd(instructions)


def test_copied_files_exist_and_reach_the_context(instructions):
    check_copies(instructions, ROOT, DOCKERIGNORE.read_text())


def test_dockerignore_keeps_history_and_junk_out():
    check_dockerignore(DOCKERIGNORE.read_text())


def test_readme_and_dockerfile_share_one_recipe():
    check_readme_recipe(README.read_text())


def _without(keyword):
    return lambda ins: [i for i in ins if i.keyword != keyword]


def _replace(old, new):
    return lambda ins: [i._replace(args=i.args.replace(old, new)) for i in ins]


def _append(keyword, args):
    return lambda ins: ins[:-1] + [Instruction(keyword, args, ins[-1].line - 1)] + ins[-1:]


# (check, how the Dockerfile is broken): every check must reject its broken variant.
BROKEN = {
    "base latest": (check_base_image, _replace("nvidia/cuda:13.0.1-runtime-ubuntu24.04", "nvidia/cuda:latest")),
    "base devel": (check_base_image, _replace("-runtime-", "-devel-")),
    "base not cuda": (check_base_image, _replace("nvidia/cuda:13.0.1-runtime-ubuntu24.04", "ubuntu:24.04")),
    "pip instead of setup.sh": (check_install_recipe, _replace(
        f"bash {SETUP}", "python3 -m pip install -r requirements.txt")),
    "setup.sh test target": (check_install_recipe, _replace(f"bash {SETUP}", f"bash {SETUP} test")),
    "constraints not copied": (check_install_recipe, _replace("requirements.txt constraints.txt", "requirements.txt")),
    "extra pip install": (check_install_recipe, _append("RUN", "pip install torch")),
    "no venv on PATH": (check_install_recipe, _replace("PATH=/opt/venv/bin:$PATH", "PATH=$PATH:/opt/venv/bin")),
    "setup.sh as the user": (check_install_recipe, lambda ins: (
        lambda k: ins[:k] + [Instruction("USER", "1000", ins[k].line)] + ins[k:])(setup_run_index(ins))),
    "final user root": (check_user, _append("USER", "root")),
    "no user": (check_user, _without("USER")),
    "uid 1001": (check_user, lambda ins: [i._replace(args="1001:1001") if i.keyword == "USER" else i
                                          for i in ins]),
    "ubuntu kept": (check_user, _replace("userdel --remove ubuntu", "true")),
    "port 8080": (check_expose, _replace("7860", "8080")),
    "no healthcheck": (check_healthcheck, _without("HEALTHCHECK")),
    "healthcheck curl": (check_healthcheck, lambda ins: [
        i._replace(args='--start-period=90s CMD ["curl", "-f", "http://127.0.0.1:7860/"]')
        if i.keyword == "HEALTHCHECK" else i for i in ins]),
    "hf cache outside volume": (check_volumes, _replace("HF_HOME=/data/hf", "HF_HOME=/home/user/.cache/hf")),
    "kernel cache outside volume": (check_volumes, _replace("QUANT_KERNEL_CACHE=/data/kernels",
                                                            "QUANT_KERNEL_CACHE=/home/user/kernels")),
    "no volume": (check_volumes, _without("VOLUME")),
    "volume not chowned": (check_volumes, _replace("chown -R user:user /home/user /data", "true")),
    "cmd other script": (check_cmd, _replace('"app.py"', '"other.py"')),
    "cmd shell form": (check_cmd, lambda ins: [i._replace(args="python3 app.py") if i.keyword == "CMD" else i
                                               for i in ins]),
    "copy a missing file": (lambda ins: check_copies(ins, ROOT, DOCKERIGNORE.read_text()),
                            _append("COPY", "no-such-file.txt ./")),
    "copy an ignored file": (lambda ins: check_copies(ins, ROOT, DOCKERIGNORE.read_text() + "\nrequirements.txt\n"),
                             lambda ins: ins),
    "quant ignored": (lambda ins: check_copies(ins, ROOT, DOCKERIGNORE.read_text() + "\nquant/demo_models\n"),
                      lambda ins: ins),
}


@pytest.mark.parametrize("name", BROKEN)
def test_each_check_catches_its_mistake(instructions, name):
    check, breakage = BROKEN[name]
    broken = breakage(list(instructions))
    assert broken != instructions or name.startswith(("copy an ignored", "quant ignored")), (
        f"{name}: the breakage changed nothing (the Dockerfile no longer has what it replaces)")
    with pytest.raises(AssertionError):
        check(broken)


@pytest.mark.parametrize("text", [
    ".gitignore\n",                                   # not .git
    "**/__pycache__\n.whl\nlogs\noutputs\n",          # .git missing
    ".git\n!.git\n.whl\n**/__pycache__\nlogs\noutputs\n",  # re-included
])
def test_dockerignore_check_catches_its_mistake(text):
    with pytest.raises(AssertionError):
        check_dockerignore(text)


@pytest.mark.parametrize("readme", [
    "## Set up\n\n```bash\npython3 -m pip install -r requirements.txt && python3 app.py\n```\n\n## Next\n",
    "## Set up\n\n```bash\nbash scripts/setup.sh test && python3 -m pytest\n```\n\n## Next\n",
    "## Other\n\n```bash\nbash scripts/setup.sh && python3 app.py\n```\n\n## Next\n",
])
def test_readme_check_catches_its_mistake(readme):
    with pytest.raises(AssertionError):
        check_readme_recipe(readme)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_is_clean():
    result = subprocess.run(["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
