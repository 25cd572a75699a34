# Sourced by the benchmark scripts, with $out set: ``run NAME ARGS...`` runs
# ``python3 -m microbench ARGS...`` once, its command and table to $out/NAME.txt, its records to
# $out/NAME.jsonl (one run per file).
run() {  # name, then microbench arguments
  local name=$1; shift
  rm -f "$out/$name.jsonl"    # --json appends: one run per file
  echo "+ python3 -m microbench $*" | tee "$out/$name.txt"
  COLUMNS=200 python3 -m microbench "$@" --json "$out/$name.jsonl" | tee -a "$out/$name.txt"
}
