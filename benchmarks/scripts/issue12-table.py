#!/usr/bin/env python3
"""The goals table of issue 12, measured in one run on one cluster.

    benchmarks/scripts/issue12-table.py BIN [ROUNDS] [--replicas N] [--ports PP]

BIN holds pfs, pfs-cp, pfs-ior, pfs-mdtest, pfs-tokenbench, pfs-meta and pfs-storage (e.g.
target/release). One fresh `pfs up` cluster from config/local.toml (authentication on, as
shipped) with N replicas (default 1) on ports PPxx (default 73) in a temporary directory; a
warm-up of every command; then ROUNDS rounds (default 3) of every measurement, and per figure
the median and the runs. CPU-s per GiB is the whole host's busy time (/proc/stat: user, nice,
system, irq, softirq, steal) over the bytes moved, servers included. Nothing else should run.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = "/tmp/pfs-compare-256m.bin"
MIB = 1 << 20


def cpu_busy_s():
    """Busy CPU-seconds of the whole host so far (first line of /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    assert fields[0] == "cpu", "/proc/stat does not start with the cpu line"
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run(cmd, env):
    """Runs cmd; returns (stdout, wall s, busy CPU-s). Fails loudly."""
    c0, t0 = cpu_busy_s(), time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    t1, c1 = time.monotonic(), cpu_busy_s()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout, t1 - t0, c1 - c0


def ior(b, cfg, env, tmp, args, name):
    out = os.path.join(tmp, f"{name}.json")
    run([f"{b}/pfs-ior", "--config", cfg, "--np", "4", "--json", out] + args, env)
    with open(out) as f:
        return json.load(f)


def result(j, api, access, key="bwMiB"):
    for t in j["tests"]:
        if t["api"] == api:
            for r in t["results"]:
                if r["access"] == access:
                    return r[key]
    raise KeyError(f"{api} {access} not in pfs-ior's JSON")


def main():
    args = sys.argv[1:]
    replicas, ports = 1, "73"
    if "--replicas" in args:
        i = args.index("--replicas")
        replicas = int(args[i + 1])
        del args[i : i + 2]
    if "--ports" in args:
        i = args.index("--ports")
        ports = args[i + 1]
        del args[i : i + 2]
    b = os.path.abspath(args[0])
    rounds = int(args[1]) if len(args) > 1 else 3
    if not os.path.exists(SRC):
        subprocess.run(["sh", "-c", f"head -c 256M /dev/urandom > {SRC}"], check=True)
    tmp = tempfile.mkdtemp(prefix="pfs-issue12-")
    cfg = os.path.join(tmp, "cfg.toml")
    with open(os.path.join(ROOT, "config/local.toml")) as f:
        text = f.read()
    text = text.replace("/tmp/pfs-local", tmp).replace("127.0.0.1:74", f"127.0.0.1:{ports}")
    text = text.replace("\nreplicas = 2 ", f"\nreplicas = {replicas} ")
    with open(cfg, "w") as f:
        f.write(text)
    env = dict(os.environ, PFS_CONFIG=cfg, PFS_LOG="warn")
    run([f"{b}/pfs", "up"], env)
    try:
        time.sleep(4)  # the storage servers' precreated-file pools fill (they compete for the cores)
        measure(b, cfg, env, tmp, rounds, replicas)
    finally:
        subprocess.run([f"{b}/pfs", "down"], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", tmp])


def measure(b, cfg, env, tmp, rounds, replicas):
    easy = ["--preset", "ior-easy", "--cpu", "-a", "PFS,POSIX", "--posix.odirect", "--posix-dir", tmp]
    hard = ["--preset", "ior-hard"]
    gib = 256 / 1024
    runs = {}

    def add(name, value):
        runs.setdefault(name, []).append(value)

    def cp_in(i, verify):
        flags = ["--verify"] if verify else []
        _, wall, cpu = run([f"{b}/pfs-cp"] + flags + [SRC, f"pfs:/cp-{i}"], env)
        return wall, cpu

    def cp_out(i):
        return run([f"{b}/pfs-cp", f"pfs:/cp-{i}", "/dev/null"], env)[1:]

    def rm(i):
        run([f"{b}/pfs", "rm", f"/cp-{i}"], env)

    # Warm-up: every command once, smaller.
    ior(b, cfg, env, tmp, easy + ["--size", "64m"], "warm-easy")
    ior(b, cfg, env, tmp, hard + ["--size", "8m"], "warm-hard")
    cp_in("w", False)
    cp_out("w")
    rm("w")
    run([f"{b}/pfs-mdtest", "--config", cfg, "--np", "8", "--preset", "mdtest-easy", "--size", "200"], env)
    run([f"{b}/pfs-tokenbench", "--config", cfg, "--iterations", "1000"], env)
    for r in range(rounds):
        print(f"round {r + 1} of {rounds}", file=sys.stderr)
        e = ior(b, cfg, env, tmp, easy, f"easy-{r}")
        h = ior(b, cfg, env, tmp, hard, f"hard-{r}")
        for access in ("write", "read"):
            add(f"ior-easy {access} PFS", result(e, "PFS", access))
            add(f"ior-easy {access} POSIX odirect", result(e, "POSIX", access))
            add(f"ior-easy {access} PFS CPU-s/GiB", result(e, "PFS", access, "cpuSecondsPerGiB"))
            add(f"ior-hard {access} PFS", result(h, "PFS", access))
        wall, cpu = cp_in(r, False)
        add("pfs-cp in MiB/s", 256 / wall)
        add("pfs-cp in CPU-s/GiB", cpu / gib)
        wall, cpu = cp_out(r)
        add("pfs-cp out MiB/s", 256 / wall)
        add("pfs-cp out CPU-s/GiB", cpu / gib)
        rm(r)
        wall, _ = cp_in(r, True)
        add("pfs-cp --verify in MiB/s", 256 / wall)
        rm(r)
        out, _, _ = run(
            [f"{b}/pfs-mdtest", "--config", cfg, "--np", "8", "--preset", "mdtest-easy", "--size", "2000"], env
        )
        rate = next(line.split()[3] for line in out.splitlines() if line.split()[:2] == ["File", "creation"])
        add("mdtest-easy creates/s --np 8", float(rate))
        tb = os.path.join(tmp, f"tb-{r}.json")
        run([f"{b}/pfs-tokenbench", "--config", cfg, "--iterations", "5000", "--json", tb], env)
        with open(tb) as f:
            t = json.load(f)
        add("token acquire p50 us", t["uncontended_acquire"]["p50_us"])
        add("grants/s 4 clients", t["grants_shared_file"]["grants_per_s"])

    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\nreplicas {replicas}, {rounds} rounds, medians (runs):")
    for k, v in runs.items():
        print(f"  {k:<34} {med[k]:>10.2f}   ({', '.join(f'{x:.2f}' for x in v)})")
    ratio = lambda a, c: med[a] / med[c]  # noqa: E731
    print("\nthe goals table:")
    rows = [
        ("ior-hard write / ior-easy write", ratio("ior-hard write PFS", "ior-easy write PFS"), "≥ 0.5"),
        ("ior-hard read / ior-easy read", ratio("ior-hard read PFS", "ior-easy read PFS"), "≥ 0.5"),
        ("ior-easy write, pfs / POSIX odirect", ratio("ior-easy write PFS", "ior-easy write POSIX odirect"), "≥ 0.8"),
        ("ior-easy read, pfs / POSIX odirect", ratio("ior-easy read PFS", "ior-easy read POSIX odirect"), "≥ 1.0"),
        ("CPU-s/GiB written (pfs-cp in)", med["pfs-cp in CPU-s/GiB"], "≤ 1.2"),
        ("CPU-s/GiB read (pfs-cp out)", med["pfs-cp out CPU-s/GiB"], "≤ 0.4"),
        ("mdtest-easy creates/s, --np 8", med["mdtest-easy creates/s --np 8"], "≥ 20000"),
        ("token acquire p50 µs", med["token acquire p50 us"], "≤ 50"),
        ("grants/s, 4 clients", med["grants/s 4 clients"], "≥ 100000"),
        ("pfs-cp --verify in / plain in", ratio("pfs-cp --verify in MiB/s", "pfs-cp in MiB/s"), "≥ 0.7"),
    ]
    for name, value, goal in rows:
        print(f"  | {name} | {value:.2f} | {goal} |")


if __name__ == "__main__":
    main()
