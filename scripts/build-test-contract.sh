#!/usr/bin/env bash
# Rebuilds tests/contracts/CollateralDouble.json (abi + bytecode) from CollateralDouble.sol with
# solc-js from the npm registry, and refreshes the miner's runtime ABI from it. Run it after editing
# the .sol file and commit both JSON files; the tests and CI use the committed artifact (no npm there).
#   scripts/build-test-contract.sh            # compiler in a temporary directory
#   SOLC_DIR=/tmp/solc scripts/build-test-contract.sh   # reuse an `npm install solc@0.8.37` there
set -euo pipefail
cd "$(dirname "$0")/.."

SOLC_VERSION=0.8.37  # checked with `npm view solc version` (collateral.md §4)
SRC=tests/contracts/CollateralDouble.sol
OUT_JSON=tests/contracts/CollateralDouble.json
RUNTIME_ABI=miner_agent/collateral/collateral_abi.json

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
solc_dir=${SOLC_DIR:-$work/solc}
if [ ! -x "$solc_dir/node_modules/.bin/solcjs" ]; then
  mkdir -p "$solc_dir"
  (cd "$solc_dir" && npm install --silent --no-audit --no-fund "solc@$SOLC_VERSION" >/dev/null)
fi
cp "$SRC" "$work/"
(cd "$work" && "$solc_dir/node_modules/.bin/solcjs" --bin --abi --optimize -o out "$(basename "$SRC")")
abi=$(ls "$work"/out/*CollateralDouble.abi)
bin=$(ls "$work"/out/*CollateralDouble.bin)
python3 - "$abi" "$bin" "$OUT_JSON" "$RUNTIME_ABI" "$SOLC_VERSION" <<'PY'
import json, sys
abi_path, bin_path, out_json, runtime_abi, version = sys.argv[1:]
abi = json.load(open(abi_path))
artifact = {"compiler": f"solc-js {version} --optimize", "source": "tests/contracts/CollateralDouble.sol",
            "abi": abi, "bin": "0x" + open(bin_path).read().strip()}
with open(out_json, "w") as f:
    json.dump(artifact, f, indent=1)
    f.write("\n")
# The miner ships the interface only: functions, events and errors, in a stable order.
kinds = {"function": 0, "event": 1, "error": 2}
runtime = sorted((e for e in abi if e["type"] in kinds), key=lambda e: (kinds[e["type"]], e["name"]))
with open(runtime_abi, "w") as f:
    json.dump(runtime, f, indent=1)
    f.write("\n")
print(f"wrote {out_json} ({len(artifact['bin']) // 2 - 1} bytes of code) and {runtime_abi} ({len(runtime)} entries)")
PY
