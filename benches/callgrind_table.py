"""Tables from a callgrind output file (written with --compress-strings=no --compress-pos=no).

Usage: python3 benches/callgrind_table.py FILE COUNT UNIT [TOP] [INCLUSIVE_PREFIX]

Prints the total instructions per UNIT (the file's total over COUNT), the TOP functions (20) by
their own instructions, and, with INCLUSIVE_PREFIX, the functions whose name contains it (but
not closures) that cost at least 100 instructions per UNIT inclusive (their calls' cost,
callees included; a function reached again through another is counted in both, so these do not
add up). Used by callgrind_echo.sh and callgrind_gather.sh.
"""

import re
import sys

if len(sys.argv) < 4:
    sys.exit(__doc__)
path, n, unit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
top = int(sys.argv[4]) if len(sys.argv) > 4 else 20
prefix = sys.argv[5] if len(sys.argv) > 5 else None
own, incl, fn, cfn, calls, total = {}, {}, None, None, False, 0
for line in open(path):
    if line.startswith("summary:"):
        total = int(line.split()[1])
    elif line.startswith("fn="):
        fn = line[3:].strip()
    elif line.startswith("cfn="):
        cfn = line[4:].strip()
    elif line.startswith("calls="):
        calls = True  # the next cost line is the call's inclusive cost, not the function's own
    elif re.match(r"^[0-9+-]", line):
        cost = int(line.split()[-1])
        if calls:
            calls = False
            if cfn != fn:
                incl[cfn] = incl.get(cfn, 0) + cost
            continue
        own[fn] = own.get(fn, 0) + cost
print(f"{total / n:,.0f} instructions per {unit} (user space, all threads)\n")
print(f"| own instructions per {unit} | share | function |\n|---:|---:|---|")
for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
    print(f"| {c / n:,.0f} | {c / total:.1%} | `{f[:110]}` |")
if prefix:
    print(f"\n| inclusive instructions per {unit} | function |\n|---:|---|")
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1]):
        if prefix in f and c / n >= 100 and "{{closure}}" not in f:
            print(f"| {c / n:,.0f} | `{f[:110]}` |")
