# Scrapes setting names, kinds and aliases from a NixOS/nix git checkout, for names_gen.go.
# Usage: python3 gen_settings.py TAG... > settings.json (repo path below); then format as names_gen.go.
import re, subprocess, sys, json
repo = "/work/.mirror/NixOS+nix/repo"
tags = sys.argv[1:]
def git(*a):
    return subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True, errors="replace").stdout
decl = re.compile(r'\b((?:Setting<[^;{]*?>|PathSetting|OptionalPathSetting|MaxBuildJobsSetting|SandboxModeSetting|ExternalBuildersSetting|BuildersSetting|PluginFilesSetting|SettingsMap|StoreReferenceSetting|ExperimentalFeatureSetting|JSONSetting<[^;{]*?>))\s+(\w+)\s*\{\s*(?:this|&\w+)\s*,', re.S)
raw = re.compile(r'R"(\w*)\((.*?)\)\1"', re.S)
names = {}
for tag in tags:
    files = [f for f in git("ls-tree", "-r", "--name-only", tag).split("\n") if f.startswith("src/") and (f.endswith(".hh") or f.endswith(".cc") or f.endswith(".h"))]
    for f in files:
        src = git("show", f"{tag}:{f}")
        if "this," not in src: continue
        src = raw.sub('"RAW"', src)
        src = "\n".join(l for l in src.split("\n") if not l.lstrip().startswith("#"))
        for m in decl.finditer(src):
            i = m.end(); depth = 1; args = []; cur = ""; instr = False
            while i < len(src) and depth > 0:
                c = src[i]
                if instr:
                    cur += c
                    if c == '\\': cur += src[i+1]; i += 1
                    elif c == '"': instr = False
                elif c == '"': instr = True; cur += c
                elif c in "({[": depth += 1; cur += c
                elif c in ")}]":
                    depth -= 1
                    if depth == 0: break
                    cur += c
                elif c == ',' and depth == 1: args.append(cur.strip()); cur = ""
                else: cur += c
                i += 1
            args.append(cur.strip())
            # args: default, name, description, aliases...
            name = None
            for j in range(1, len(args) - 1):
                nm = re.fullmatch(r'"([a-z][a-z0-9-]*)"', args[j])
                if nm and args[j+1].startswith('"'):
                    name = nm.group(1); break
            if not name: continue
            aliases = []
            if len(args) > j + 2 and args[j+2].startswith("{"):
                aliases = re.findall(r'"([a-z][a-z0-9-]*)"', args[j+2])
            e = names.setdefault(name, {"aliases": set(), "tags": set(), "type": ""})
            e["type"] = re.sub(r"\s+", "", m.group(1))
            e["aliases"].update(aliases); e["tags"].add(tag)
out = {k: {"aliases": sorted(v["aliases"]), "type": v["type"], "first": sorted(v["tags"], key=lambda t: [int(x) if x.isdigit() else 999 for x in t.split('.')])[0]} for k, v in names.items()}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
