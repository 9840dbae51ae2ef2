#!/usr/bin/env python3
"""hotdog's module structure drawn from its own paths (`use`, `crate::`, `hotdog_stages::`,
`super::`): which folder (stage) uses which, and any circle between folders or between files.
A parent module and its children (`mod x;` / `use super::*`) are one unit and not counted.
Exits 1 when there is a circle; CI runs it. Usage: dev/structure.py (from anywhere)."""
import os, re, sys
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
roots = {'crate_bin': 'src', 'crate_stages': 'crates/stages/src'}
def modpath(root, f):
    rel = os.path.relpath(f, root)[:-3].split('/')
    if rel[-1] == 'mod': rel = rel[:-1]
    if rel == ['lib'] or rel == ['main']: rel = []
    return rel
edges = set()
for crate, root in roots.items():
    for d, _, fs in os.walk(root):
        for fn in fs:
            if not fn.endswith('.rs'): continue
            f = os.path.join(d, fn)
            me = modpath(root, f)
            if me and me[-1] == 'tests': continue
            text = open(f).read()
            text = text.split('\nmod tests {')[0]
            text = re.sub(r'(?m)^\s*//.*$', '', text)
            targets = set()
            for m in re.finditer(r'\b(crate|hotdog_stages|super)((?:::[a-z_0-9]+)+)', text):
                head, rest = m.group(1), m.group(2).split('::')[1:]
                if head == 'super':
                    path = me[:-1] + rest
                    if not rest: continue
                    cr = crate
                elif head == 'hotdog_stages':
                    cr, path = 'crate_stages', rest
                else:
                    cr, path = crate, rest
                targets.add((cr, tuple(path)))
            # `use x::{a, b}` inside crate paths
            for m in re.finditer(r'\b(crate|hotdog_stages)::((?:[a-z_0-9]+::)*)\{([^}]*)\}', text):
                cr = 'crate_stages' if m.group(1) == 'hotdog_stages' else crate
                pre = [p for p in m.group(2).split('::') if p]
                for item in m.group(3).split(','):
                    item = item.strip().split(' as ')[0].split('::')[0]
                    if item and item != 'self' and item[0].islower(): targets.add((cr, tuple(pre + [item])))
            for cr, path in targets:
                # resolve to an existing module file, longest prefix
                r = roots[cr]
                best = []
                for k in range(len(path), 0, -1):
                    p = os.path.join(r, *path[:k])
                    if os.path.exists(p + '.rs') or os.path.exists(os.path.join(p, 'mod.rs')):
                        best = list(path[:k]); break
                if not best: continue
                a, b = (crate, tuple(me)), (cr, tuple(best))
                if a == b: continue
                # skip parent<->child
                if a[0] == b[0] and (a[1][:len(b[1])] == b[1] or b[1][:len(a[1])] == a[1]): continue
                edges.add((a, b))
def name(n):
    if not n[1]: return 'hotdog-stages' if n[0] == 'crate_stages' else 'hotdog (lib.rs, main.rs)'
    return ('stages::' if n[0] == 'crate_stages' else '') + '::'.join(n[1])
def folder(n): return (n[0], n[1][:1])
fe = {(folder(a), folder(b)) for a, b in edges if folder(a) != folder(b)}
print('folders:')
for a in sorted({x for x, _ in fe} | {y for _, y in fe}):
    print(f'  {name(a):24s} -> ' + ', '.join(sorted(name(b) for x, b in fe if x == a)))
def cycles(es):
    g = {}
    for a, b in es: g.setdefault(a, set()).add(b)
    found = []
    def dfs(n, stack, seen):
        for m in g.get(n, ()):
            if m in stack: found.append(stack[stack.index(m):] + [m])
            elif m not in seen: seen.add(m); dfs(m, stack + [m], seen)
    for n in list(g): dfs(n, [n], {n})
    return found
bad = cycles(fe) + cycles(edges)
for c in bad[:20]: print('CIRCLE:', ' -> '.join(name(x) for x in c))
print('circles:', len(bad))
sys.exit(1 if bad else 0)
