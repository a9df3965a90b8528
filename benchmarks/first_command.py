"""How long a new user waits: the README's first command, cold and warm, and loading the
bundled models, each in a fresh Python process.

    python benchmarks/first_command.py

Rows (wall seconds and the child process's CPU seconds, user + system):

- ``first command, cold``: a fresh process with an empty compilation cache
  (``JAXATTR_CACHE_DIR`` set to a new directory) — what the very first run costs;
- ``first command, disk cache``: the same command again in a new process, now reading the
  compiled programs from JAX's persistent cache — every later run from the shell;
- ``first command, in process``: the command's second call inside one process (``cli.main``
  twice) — a notebook or script that attributes again;
- ``load_model(name)``: import excluded, in a fresh process; against transformers'
  ``from_pretrained`` (random initialisation first) in another fresh process;
- ``generate 3 tokens``: jaxattr's greedy decoding (one compiled step per bucket) against
  Flax ``generate`` (a compiled ``while_loop``), compilation included, fresh processes.

The machine's load average is printed with the numbers: on a shared machine wall times grow
with the load; CPU seconds much less.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_first_command() -> list:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = text.split("A newcomer's first command", 1)[1]
    return shlex.split(re.search(r"```bash\n(jaxattr attribute [^\n]+)\n```", block).group(1))


def run(code: str, env: dict) -> tuple:
    """``(wall_s, cpu_s, stdout)`` of ``python -c code`` in a fresh process."""
    before = os.times()
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    after = os.times()
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system)
    return wall, cpu, res.stdout


def timed(code: str) -> str:
    """``code`` followed by a JSON line of the timings it stored in ``T``: lines
    ``t = clock()`` ... ``T[key] = since(t)`` record ``(wall, CPU)`` seconds."""
    return ("import time, json\nT = {}\n"
            "clock = lambda: (time.perf_counter(), time.process_time())\n"
            "since = lambda t: (time.perf_counter() - t[0], time.process_time() - t[1])\n"
            + code + "\nprint('@@' + json.dumps(T))\n")


def inner(stdout: str, key: str = "s") -> tuple:
    return tuple(json.loads(stdout.rsplit("@@", 1)[1])[key])


def main() -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cache = tempfile.mkdtemp(prefix="jaxattr-xla-")
    env["JAXATTR_CACHE_DIR"] = cache
    argv = readme_first_command()[1:]
    html = os.path.join(cache, "report.html")
    argv = [html if a == "report.html" else a for a in argv]
    cli = f"from jaxattr import cli\nassert cli.main({argv!r}) == 0\n"
    rows = []
    load0 = os.getloadavg()[0]

    wall, cpu, _ = run(cli, env)
    rows.append(("first command, cold (empty compilation cache)", wall, cpu))
    wall, cpu, _ = run(cli, env)
    rows.append(("first command, disk cache (new process)", wall, cpu))
    _, _, out = run(timed(cli + "t = clock()\n" + cli +
                          "T['again'] = since(t)\n"), env)
    rows.append(("first command, in process (second call)", *inner(out, "again")))

    env_fresh = dict(env, JAXATTR_CACHE_DIR=tempfile.mkdtemp(prefix="jaxattr-xla-"))
    for name in ("toy-recall", "toy-mt"):
        code = timed("import jaxattr\nt = clock()\n"
                     f"jaxattr.load_model({name!r})\nT['s'] = since(t)\n")
        rows.append((f"load_model({name!r})", *inner(run(code, env_fresh)[2])))
        code = timed(
            "import jaxattr\nfrom jaxattr.loading import _auto_classes\n"
            "from transformers import AutoConfig\n"
            f"p = jaxattr.zoo.path({name!r})\nc = AutoConfig.from_pretrained(p)\n"
            "auto = _auto_classes()[1 if c.is_encoder_decoder else 0]\n"
            "t = clock()\nauto.from_pretrained(p)\n"
            "T['s'] = since(t)\n")
        rows.append((f"  transformers from_pretrained({name!r}), random init first",
                     *inner(run(code, env_fresh)[2])))

    prompt = "Kim's red ball. Sam's blue cup. Sam's"
    gen = timed(
        "import jaxattr\nm = jaxattr.load_model('toy-recall')\nt = clock()\n"
        f"m.generate({prompt!r}, max_new_tokens=3)\nT['s'] = since(t)\n")
    rows.append(("generate 3 tokens (jaxattr greedy, compile included)",
                 *inner(run(gen, env_fresh)[2])))
    hf = timed(
        "import jaxattr, numpy as np\nm = jaxattr.load_model('toy-recall')\n"
        f"ids = np.asarray([m.tokenizer({prompt!r})['input_ids'][:-1]], np.int32)\n"
        "t = clock()\n"
        "m.hf_model.generate(ids, params=m.params, max_new_tokens=3, pad_token_id=0)"
        ".sequences.block_until_ready()\nT['s'] = since(t)\n")
    rows.append(("  Flax generate 3 tokens (compile included)",
                 *inner(run(hf, env_fresh)[2])))

    load1 = os.getloadavg()[0]
    print(f"README first command: jaxattr {' '.join(argv)}")
    print(f"load average {load0:.1f} at start, {load1:.1f} at end; {os.cpu_count()} CPUs")
    print(f"{'what':62s} {'wall s':>8s} {'CPU s':>8s}")
    for what, wall, cpu in rows:
        print(f"{what:62s} {wall:8.2f} {'' if cpu is None else f'{cpu:8.2f}':>8s}")


if __name__ == "__main__":
    main()
