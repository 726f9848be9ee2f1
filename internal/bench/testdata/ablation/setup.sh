#!/bin/bash
# setup.sh CELL1NS CELL2NS: copy into the variants' directory for the grp
# variant: host veths in device group 7, the VTEP in group 8.
set -e
for ns in "$@"; do
	for dev in $(nsenter --net="$ns" ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^s-'); do
		nsenter --net="$ns" ip link set dev "$dev" group 7
	done
	nsenter --net="$ns" ip link set dev trellis-vtep group 8
done
