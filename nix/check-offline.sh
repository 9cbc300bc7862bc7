#!/usr/bin/env bash
# Offline checks of Kestrel's Nix files (flake.nix and nix/): what can be
# checked without nixpkgs or its binary cache, which this machine cannot reach.
#
#   bash nix/check-offline.sh [KESTREL-BINARY]                       # .ci/run
#   NIXPKGS_LIB=/path/to/nixpkgs/lib bash nix/check-offline.sh [KESTREL-BINARY]
#
# Always (Debian, as root for apt):
#   - installs nix-bin from apt when nix-instantiate is missing (timed);
#   - parses every .nix file of the repository with nix-instantiate --parse;
#   - evaluates what needs no input: flake.nix's inputs and outputs header, the
#     TOML files the Nix code reads (Cargo.toml, config.toml), the VM tests'
#     topologies;
#   - compiles bpf/*.bpf.c the way the package does (a clang without sysroot
#     or resource directory, -Werror) when clang and cargo's copy of libbpf's
#     headers are on the machine.
# With NIXPKGS_LIB (a nixpkgs lib/ checkout; not in CI):
#   - evaluates the NixOS module against stub NixOS options (nix/eval-module.nix):
#     misuses must fail, the generated config.toml must hold the same data as
#     the settings and be accepted by the kestrel binary, the unit must have no
#     key systemd-analyze does not know;
#   - evaluates the flake's outputs against a stub nixpkgs (nix/eval-flake.nix)
#     and lints the rendered VM test scripts with pyflakes and mypy (if present).
# (The kestrel binary defaults to target/debug/kestrel; no KESTREL_* variables
# here, Kestrel reads those as configuration.)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
kestrel=${1:-$repo/target/debug/kestrel}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failures=0
step() { printf '\n== %s\n' "$*"; }
pass() { printf '  ok    %s\n' "$*"; }
skip() { printf '  skip  %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }

step "nix-bin"
if ! command -v nix-instantiate >/dev/null; then
  start=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends nix-bin >"$scratch/apt.log" 2>&1; then
    apt-get update >>"$scratch/apt.log" 2>&1
    apt-get install -y --no-install-recommends nix-bin >>"$scratch/apt.log" 2>&1 || {
      cat "$scratch/apt.log"; exit 1; }
  fi
  echo "  installed nix-bin in $(($(date +%s) - start)) s"
fi
nix-instantiate --version
# Single-user Nix without a daemon, build users, sandbox or binary cache.
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = false'

step "every .nix file parses"
mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
for file in "${nix_files[@]}"; do
  if nix-instantiate --parse "$file" >/dev/null 2>"$scratch/parse.err"; then pass "$file"
  else fail "$file"; sed 's/^/        /' "$scratch/parse.err"; fi
done

step "evaluation without inputs"
if nix-instantiate --eval --strict --json -E '
  let
    flake = import ./flake.nix;
    cargo = builtins.fromTOML (builtins.readFile ./Cargo.toml);
    config = builtins.fromTOML (builtins.readFile ./config.toml);
    topologies = import ./nix/topologies.nix;
    check = ok: message: if ok then true else throw message;
    names = map (t: t.name) topologies.matrix;
    hotplug = topologies.hotplug;
  in
  assert check (builtins.attrNames flake.inputs == [ "nixpkgs" ]) "flake.nix must have nixpkgs as its only input";
  assert check (builtins.attrNames (builtins.functionArgs flake.outputs) == [ "nixpkgs" "self" ])
    "flake.nix outputs must take exactly { self, nixpkgs }";
  # nix/package.nix reads the version; nix/module.nix the defaults of its typed options.
  assert check (builtins.isString cargo.workspace.package.version) "Cargo.toml: workspace.package.version";
  assert check (builtins.isInt config.sampling.frequency_hz) "config.toml: sampling.frequency_hz";
  assert check (builtins.isFloat config.off_cpu.probability) "config.toml: off_cpu.probability";
  assert check (builtins.isInt config.memory.bpf_cap_bytes) "config.toml: memory.bpf_cap_bytes";
  assert check (builtins.length names == builtins.length (builtins.attrNames (builtins.listToAttrs
    (map (name: { inherit name; value = null; }) names)))) "topologies: names must be unique";
  assert builtins.all (t: check (t.online >= 1 && t.online <= t.possible
    && (t.possible <= 255 || t.possibleCpusParam or false))
    "topology ${t.name}: 1 <= online <= possible, past 255 possible CPUs only through possible_cpus=")
    topologies.matrix;
  assert check (hotplug.online + hotplug.add <= hotplug.possible && hotplug.remove <= hotplug.add)
    "hotplug: online + add <= possible, remove <= add";
  {
    inherit (flake) description;
    nixpkgs = flake.inputs.nixpkgs.url;
    version = cargo.workspace.package.version;
    topologies = names ++ [ hotplug.name ];
  }' >"$scratch/eval.json" 2>"$scratch/eval.err"; then
  pass "flake header, Cargo.toml and config.toml keys, topologies: $(cat "$scratch/eval.json")"
else
  fail "evaluation without inputs:"; sed 's/^/        /' "$scratch/eval.err"
fi

step "BPF objects with a clang that has no sysroot (the package's unwrapped clang)"
libbpf_src=""
if command -v cargo >/dev/null && command -v clang >/dev/null; then
  libbpf_src=$(cargo metadata --format-version 1 --offline 2>/dev/null | /usr/bin/python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "libbpf-sys":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "libbpf", "src"))
        break' || true)
fi
if [ -n "$libbpf_src" ] && [ -f "$libbpf_src/bpf_helpers.h" ]; then
  mkdir -p "$scratch/include/bpf"
  cp "$libbpf_src"/*.h "$scratch/include/bpf/"
  # crates/probes/build.rs's flags, then libbpf-cargo's.
  flags=(-I bpf -Wall -Wno-unused-function -Werror -I "$scratch/include" -fno-stack-protector -g -O2 -target bpf)
  for source in bpf/*.bpf.c; do
    for arch in x86 arm64; do
      if clang -nostdinc -resource-dir "$scratch/no-resource-dir" "${flags[@]}" -D__TARGET_ARCH_$arch \
        -c "$source" -o "$scratch/out.o" 2>"$scratch/clang.err"; then
        pass "$source for __TARGET_ARCH_$arch"
      else fail "$source for __TARGET_ARCH_$arch:"; sed 's/^/        /' "$scratch/clang.err"; fi
    done
  done
  # What nixpkgs' clang wrapper adds (toolchain and hardening flags), with and
  # without -fzero-call-used-regs (which hardeningDisable could remove).
  # Informational: it shows why the package does not use the wrapped clang.
  wrapper=(--gcc-toolchain=/usr -fPIC -fstack-protector-strong -fstack-clash-protection -D_FORTIFY_SOURCE=2)
  for extra in -fzero-call-used-regs=used-gpr ""; do
    if clang "${wrapper[@]}" $extra "${flags[@]}" -D__TARGET_ARCH_x86 \
      -c bpf/kestrel.bpf.c -o "$scratch/out.o" 2>"$scratch/wrapped.err"; then
      echo "  note  this clang accepts the wrapper's flags${extra:+ and $extra} with -target bpf"
    else
      echo "  note  with the wrapper's flags${extra:+ and $extra} the BPF build fails:"
      sed 's/^/        /' "$scratch/wrapped.err"
    fi
  done
else
  skip "needs clang, cargo and libbpf-sys in cargo's registry (cargo build -p kestrel first)"
fi

if [ -z "${NIXPKGS_LIB:-}" ]; then
  step "NixOS module and flake evaluation"
  skip "set NIXPKGS_LIB to a nixpkgs lib/ directory (e.g. a clone of github:nix-community/nixpkgs.lib)"
else
  step "NixOS module evaluated with $NIXPKGS_LIB (nix/eval-module.nix)"
  if nix-instantiate --eval --strict --json nix/eval-module.nix --arg lib "import $NIXPKGS_LIB" \
    >"$scratch/module.json" 2>"$scratch/module.err"; then
    [ -x "$kestrel" ] || kestrel=""
    if /usr/bin/python3 - "$scratch" "$kestrel" <<'EOF'; then pass "module checks"; else fail "module checks"; fi
import json, os, subprocess, sys, tomllib
scratch, kestrel = sys.argv[1], sys.argv[2]
result = json.load(open(os.path.join(scratch, "module.json")))
ok = True
def report(good, text):
    global ok
    ok &= good
    print(f"        {'ok  ' if good else 'FAIL'} {text}")
report(not result["controlFails"], "the unmodified configuration evaluates")
for name, failed in sorted(result["misuseFails"].items()):
    report(failed, f"misuse rejected at evaluation: {name}")
scenarios = result["scenarios"]
report(scenarios["disabled"] == {"services": [], "users": []}, "disabled: no service, no user")
report(bool(scenarios["noExporters"]["failedAssertions"]), "no exporters: the module's assertion fires")
for name in ("defaults", "everything"):
    scenario = scenarios[name]
    report(not scenario["failedAssertions"], f"{name}: no failed assertion")
    report(tomllib.loads(scenario["configText"]) == json.loads(scenario["configJSON"]),
           f"{name}: config.toml holds exactly the settings")
    path = os.path.join(scratch, f"{name}.toml")
    open(path, "w").write(scenario["configText"])
    if kestrel:
        run = subprocess.run([kestrel, "--config", path, "config"], capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"]})
        report(run.returncode == 0, f"{name}: accepted by `kestrel config`" + (f": {run.stderr.strip()}" if run.returncode else ""))
    # The unit, with the stub store paths pointed at files that exist here.
    unit = scenario["unit"].replace(
        "/nix/store/11111111111111111111111111111111-kestrel-0.1.0/bin/kestrel", kestrel or "/bin/true"
    ).replace("/nix/store/00000000000000000000000000000000-kestrel.toml", path)
    unit_path = os.path.join(scratch, "kestrel.service")
    open(unit_path, "w").write(unit)
    verify = subprocess.run(["systemd-analyze", "verify", unit_path], capture_output=True, text=True)
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if line.strip()]
    report(verify.returncode == 0 and not complaints,
           f"{name}: systemd-analyze verify knows every key" + ("".join(f"\n             {c}" for c in complaints)))
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit_path],
                              capture_output=True, text=True)
    level = [line for line in security.stdout.splitlines() if "Overall exposure level" in line]
    print(f"        note {name}: systemd-analyze security: {level[0].split(': ', 1)[-1] if level else security.stderr.strip()}")
sys.exit(0 if ok else 1)
EOF
  else
    fail "nix/eval-module.nix:"; sed 's/^/        /' "$scratch/module.err"
  fi

  step "flake outputs evaluated with $NIXPKGS_LIB and a stub nixpkgs (nix/eval-flake.nix)"
  if nix-instantiate --eval --strict --json --read-write-mode nix/eval-flake.nix \
    --argstr libPath "$NIXPKGS_LIB" >"$scratch/flake.json" 2>"$scratch/flake.err"; then
    if /usr/bin/python3 - "$scratch" "$kestrel" "$repo" <<'EOF'; then pass "flake checks"; else fail "flake checks"; fi
import importlib.util, json, os, subprocess, sys
scratch, kestrel, repo = sys.argv[1], sys.argv[2], sys.argv[3]
flake = json.load(open(os.path.join(scratch, "flake.json")))
ok = True
def report(good, text):
    global ok
    ok &= good
    print(f"        {'ok  ' if good else 'FAIL'} {text}")
for system, packages in flake["packages"].items():
    package = packages["default"]
    report(package["cargoBuildFlags"] == ["--package", "kestrel"] and not package["doCheck"]
           and package["mainProgram"] == "kestrel",
           f"packages.{system}.default: {package['name']}, {package['nativeBuildInputs']}, {package['buildInputs']}"
           f"; src: {package['src']}")
report(flake["modulePackage"].startswith("kestrel-"), "nixosModules.default defaults to the flake's package")
checks = flake["checks"]["x86_64-linux"]
tests = {name: check for name, check in checks.items() if "testScript" in check}
report(len(tests) == 7 and "package" in checks, f"checks.x86_64-linux: {sorted(checks)}")
report(sorted(flake["checks"]["aarch64-linux"]) == ["package"], "checks.aarch64-linux: the package only")
# The test scripts as the driver would run them, with a typed stand-in for the driver.
lint = os.path.join(scratch, "lint")
os.makedirs(lint)
open(os.path.join(lint, "driver_stub.py"), "w").write('''
from contextlib import contextmanager
from typing import Iterator
class Machine:
    def succeed(self, *commands: str, timeout: int | None = None) -> str: raise NotImplementedError
    def wait_for_unit(self, unit: str, user: str | None = None, timeout: int = 900) -> None: raise NotImplementedError
    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str: raise NotImplementedError
    def send_monitor_command(self, command: str) -> str: raise NotImplementedError
machine = Machine()
@contextmanager
def subtest(name: str) -> Iterator[None]:
    yield
''')
scripts = []
for name, check in tests.items():
    path = os.path.join(lint, name.replace("-", "_") + ".py")
    open(path, "w").write("from driver_stub import machine, subtest\n" + check["testScript"])
    scripts.append(path)
    if kestrel:
        config = os.path.join(scratch, f"{name}.toml")
        open(config, "w").write(check["guest"]["kestrelConfig"])
        run = subprocess.run([kestrel, "--config", config, "config"], capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"]})
        report(run.returncode == 0, f"{name}: guest config accepted by `kestrel config`, qemu {check['guest']['qemuOptions']}"
               f" kernel {check['guest']['kernelParams']}" + (f": {run.stderr.strip()}" if run.returncode else ""))
for tool in ("pyflakes", "mypy"):
    if importlib.util.find_spec(tool) is None:
        print(f"        skip {tool} is not installed (apt-get install python3-pyflakes mypy)")
        continue
    args = ["--no-error-summary"] if tool == "mypy" else []
    run = subprocess.run(["/usr/bin/python3", "-m", tool, *args, *scripts], capture_output=True, text=True, cwd=lint)
    report(run.returncode == 0, f"{tool} on the {len(scripts)} VM test scripts" + (f":\n{run.stdout}{run.stderr}" if run.returncode else ""))
sys.exit(0 if ok else 1)
EOF
  else
    fail "nix/eval-flake.nix:"; sed 's/^/        /' "$scratch/flake.err"
  fi
fi

echo
if [ "$failures" -eq 0 ]; then echo "check-offline: all checks passed"; else echo "check-offline: $failures check(s) failed"; exit 1; fi
