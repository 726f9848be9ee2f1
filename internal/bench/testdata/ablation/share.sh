#!/bin/bash
# share.sh perf.data...: the shares of the test binary's samples (BenchmarkAblation's
# client thread, its softirq work included) in nftables (with the hooks' entry),
# in copying interface names (sized_strscpy and strnlen: nft's meta iifname and
# oifname) and in conntrack; COMM (perf's --comm list) defaults to the test
# binary, bench.test (for ABLATION_TCP: COMM=iperf3,ksoftirqd/0,ksoftirqd/1).
for f in "$@"; do
perf report -i $f --comm "${COMM:-bench.test}" --sort sym --stdio --percentage relative 2>/dev/null | grep -v "^#" | grep -v "^$" | awk -v f=$f '
{ p=$1; sub("%","",p); s=$3
  if (s ~ /^(nft_|__nft_|nf_tables|jhash|nf_hook)/) nft+=p
  else if (s ~ /^(sized_strscpy|strnlen)$/) name+=p
  else if (s ~ /^(nf_conntrack|__nf_conntrack|nf_ct_|ipv4_conntrack|__nf_ct|nf_confirm|hash_conntrack)/) ct+=p
}
END { printf "%-28s nft+hooks %5.2f%%  names %5.2f%%  conntrack %5.2f%%\n", f, nft, name, ct }'
done
