#!/usr/bin/env python3
"""Text→image recall of a running `quarry serve`, measured as a user gets it: every caption of a
LAVIS-format annotation file sent to GET /api/v1/search (the server's defaults, k=10), counting
where the described image lands. Prints R@1, R@5 and request latency p50/p95.

  python3 tools/served_search_recall.py http://127.0.0.1:8080 scenes/annotations.json scenes
"""
import json
import os
import sys
import time
import urllib.parse
import urllib.request

base, ann, root = sys.argv[1], sys.argv[2], sys.argv[3]
data = json.load(open(ann))
hits1 = hits5 = total = 0
lat = []
for a in data:
    want = os.path.abspath(os.path.join(root, a["image"]))
    caps = a["caption"] if isinstance(a["caption"], list) else [a["caption"]]
    for c in caps:
        t=time.time()
        r = json.load(urllib.request.urlopen(base + "/api/v1/search?" + urllib.parse.urlencode({"q": c, "k": 10})))
        lat.append((time.time()-t)*1000)
        paths = [h["path"] for h in r["hits"]]
        total += 1
        hits1 += paths[:1] == [want]
        hits5 += want in paths[:5]
lat.sort()
print(f"queries {total} R@1 {100*hits1/total:.1f} R@5 {100*hits5/total:.1f} p50 {lat[len(lat)//2]:.1f} ms p95 {lat[int(len(lat)*.95)]:.1f} ms")
