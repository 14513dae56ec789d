"""The page `vitkit serve` shows at /: pick or drop images, see each one's top classes and,
for a ViT, its attention rollout.

Plain HTML and a few lines of script, no build step: each image is POSTed to /predict as
it is, and names and labels are set as text (never parsed as HTML).
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vitkit</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 15px/1.4 system-ui, sans-serif; max-width: 880px; margin: 2em auto; padding: 0 1em; color: #222; }
 #drop { border: 2px dashed #999; border-radius: 8px; padding: 2em; text-align: center; cursor: pointer; }
 #drop.over { border-color: #2a6; background: #f3fbf6; }
 .card { display: flex; gap: 1em; align-items: center; border-bottom: 1px solid #eee; padding: .8em 0; }
 .card img { width: 96px; height: 96px; object-fit: contain; background: #f4f4f4; image-rendering: pixelated; }
 .card img.overlay { width: auto; height: 120px; }
 .bars { flex: 1; } .name { font-weight: 600; margin-bottom: .3em; word-break: break-all; }
 .row { display: flex; align-items: center; gap: .5em; margin: 2px 0; }
 .row span { width: 12em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
 .bar { height: 12px; background: #2a6; border-radius: 3px; } .error { color: #b00; }
 small { color: #777; }
</style></head><body>
<h1>vitkit</h1>
<p id="about">loading the model&hellip;</p>
<div id="drop">Drop images here, or click to choose files<input id="files" type="file" accept="image/*" multiple hidden></div>
<div id="results"></div>
<script>
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; };
let about = {};
const ready = fetch("info").then(r => r.json()).then(i => { about = i; document.getElementById("about").textContent =
  `${i.checkpoint}: ${i.classes.length} classes, ${i.img_size}x${i.img_size} input, ${i.runtime}` +
  (i.explain ? "; beside each result, the attention rollout: the patches the prediction drew on" : ""); });
async function classify(file) {
  const card = el("div", "card"), img = el("img"), bars = el("div", "bars");
  img.src = URL.createObjectURL(file); bars.append(el("div", "name", file.name));
  card.append(img, bars); document.getElementById("results").prepend(card);
  try {
    await ready;
    const query = `name=${encodeURIComponent(file.name)}${about.explain ? "&explain=1" : ""}`;
    const r = await fetch(`predict?${query}`, {method: "POST", body: file});
    const out = await r.json().catch(() => ({error: `HTTP ${r.status} ${r.statusText}`}));
    if (!r.ok) { bars.append(el("div", "error", out.error)); return; }
    for (const t of out.topk) {
      const row = el("div", "row"), bar = el("div", "bar");
      bar.style.width = `${Math.max(1, 300 * t.prob)}px`;
      row.append(el("span", "", t.class), bar, el("small", "", `${(100 * t.prob).toFixed(1)}%`));
      bars.append(row);
    }
    bars.append(el("small", "", `${out.ms} ms`));
    if (out.explanation) { const map = el("img", "overlay"); map.src = out.explanation; card.append(map); }
  } catch (e) { bars.append(el("div", "error", String(e))); }
}
const drop = document.getElementById("drop"), input = document.getElementById("files");
drop.onclick = () => input.click();
input.onchange = () => [...input.files].forEach(classify);
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => { e.preventDefault(); drop.classList.remove("over"); [...e.dataTransfer.files].forEach(classify); };
</script></body></html>
"""
