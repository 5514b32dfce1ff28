#!/usr/bin/env bash
# Links the simulated driver once per driver branch, exporting exactly the `nvml*`
# functions of that branch that the simulator has (plus its own nvmlSim* extras):
# a function can only be missing from a library at link time.
#
#   scripts/link_sim_branches.sh <libnvml_sim.a> <full libnvidia-ml.so.1> <branches dir> <out dir>
#
# writes <out dir>/<branch>/libnvidia-ml.so.1 for each <branches dir>/<branch>.txt,
# and <out dir>/<branch>/missing.txt: the branch's functions the simulator lacks.
set -euo pipefail
archive=$1 full=$2 lists=$3 out=$4
export LC_ALL=C
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

nm -D --defined-only "$full" | awk '$2 == "T" {print $3}' | sort -u >"$work/full"
grep '^nvmlSim' "$work/full" >"$work/extras" || true

for list in "$lists"/*.txt; do
	branch=$(basename "$list" .txt)
	dir=$out/$branch
	mkdir -p "$dir"
	grep '^nvml' "$list" | sort -u >"$work/branch"
	comm -12 "$work/branch" "$work/full" >"$work/has"
	comm -23 "$work/branch" "$work/full" >"$dir/missing.txt"
	sort -u "$work/has" "$work/extras" >"$work/exports"
	{
		echo '{ global:'
		sed 's/.*/  &;/' "$work/exports"
		echo 'local: *; };'
	} >"$work/map"
	# -u pulls in the archive members that define the exports (and what they use);
	# --gc-sections drops the rest.
	cc -shared -o "$dir/.libnvidia-ml.so.1.new" -Wl,-soname,libnvidia-ml.so.1 \
		-Wl,--version-script="$work/map" -Wl,--gc-sections -Wl,--strip-debug -Wl,-z,defs \
		$(sed 's/.*/-Wl,-u,&/' "$work/exports") \
		"$archive" -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
	nm -D --defined-only "$dir/.libnvidia-ml.so.1.new" | awk '$2 == "T" {print $3}' | sort -u >"$work/got"
	if ! cmp -s "$work/got" "$work/exports"; then
		echo "link_sim_branches: branch $branch exports differ from its list:" >&2
		diff "$work/exports" "$work/got" >&2 || true
		exit 1
	fi
	# Replaced by rename: a process that has the old one mapped keeps it.
	mv -f "$dir/.libnvidia-ml.so.1.new" "$dir/libnvidia-ml.so.1"
done
