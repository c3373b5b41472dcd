"""Rewrite one benchmark's block in a Markdown file: the text between <!-- NAME:begin -->
and <!-- NAME:end -->, or a new section with that block at the end when the file has none."""


def replace_block(path, name, text, heading):
    with open(path) as f:
        doc = f.read()
    beg, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if beg in doc:
        i, k = doc.index(beg) + len(beg), doc.index(end)
        doc = doc[:i] + "\n" + text + "\n" + doc[k:]
    else:
        doc += f"\n## {heading}\n\n{beg}\n{text}\n{end}\n"
    with open(path, "w") as f:
        f.write(doc)
