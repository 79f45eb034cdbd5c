#!/bin/bash
# sidebyside.sh SCENARIO [ROUNDS] [SYSTEM...]: corral against the systems of
# the side-by-side harness (../shared/perf, or $PERF), each run ROUNDS times
# (3), alternated (bare, nginx, corral, bare, nginx, corral, ...), and the
# median of every figure per system. The harness pins the system under test
# to CPU 0 and the load to CPU 1; corral is built from this checkout with
# default flags unless CORRAL_FLAGS adds some. Every line is kept in
# $OUT (bench/sidebyside.txt).
#
#   bench/sidebyside.sh hot 3 bare nginx corral
#   bench/sidebyside.sh keys 3 nginx varnish corral
set -euo pipefail
cd "$(dirname "$0")/.."
scen=${1:?usage: $0 SCENARIO [ROUNDS] [SYSTEM...]}
rounds=${2:-3}
shift $(($# < 2 ? $# : 2))
systems=("$@")
[ $# -eq 0 ] && systems=(bare nginx corral)
perf=${PERF:-$(cd .. && pwd)/shared/perf}
out=${OUT:-bench/sidebyside.txt}
bin=$(mktemp -d)/corral
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" .
export CORRAL_CMD="$bin -listen 127.0.0.1:8085 -upstream http://127.0.0.1:9000 -admin-listen 127.0.0.1:8086 -log-level warn ${CORRAL_FLAGS:-}"
lines=()
for ((r = 1; r <= rounds; r++)); do
	for s in "${systems[@]}"; do
		line=$("$perf/run.sh" "$s" "$scen" 2>/dev/null | tail -1)
		echo "round $r: $line"
		echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) round=$r $line" >>"$out"
		lines+=("$line")
	done
done
# The median of each key=value figure, per system (a figure with a unit,
# such as p99=2.39ms, keeps it).
printf '%s\n' "${lines[@]}" | awk '
{
	sys = $1; sub(/\/.*/, "", sys)
	if (!(sys in seen)) { seen[sys] = 1; order[++n] = sys }
	for (i = 2; i <= NF; i++) {
		split($i, kv, "="); k = kv[1]; v = kv[2]
		if (v !~ /^[0-9.]+(ms|s|us|µs)?$/) continue
		if (!((sys, k) in cnt)) { keys[sys, ++nk[sys]] = k }
		unit = v; sub(/^[0-9.]+/, "", unit); units[sys, k] = unit
		val[sys, k, ++cnt[sys, k]] = v + 0
	}
}
END {
	for (j = 1; j <= n; j++) {
		s = order[j]; line = s " (median of " cnt[s, keys[s, 1]] "):"
		for (m = 1; m <= nk[s]; m++) {
			k = keys[s, m]; c = cnt[s, k]
			for (a = 1; a <= c; a++) srt[a] = val[s, k, a]
			for (a = 1; a <= c; a++) for (b = a + 1; b <= c; b++) if (srt[b] < srt[a]) { t = srt[a]; srt[a] = srt[b]; srt[b] = t }
			med = (c % 2) ? srt[(c + 1) / 2] : (srt[c / 2] + srt[c / 2 + 1]) / 2
			line = line " " k "=" med units[s, k]
		}
		print line
	}
}'
