// The budget meter's view (anywidget ES module): bars per budget, the cell, the latest calls.
const usd = (micros) => {
  const v = micros / 1e6;
  if (v === 0) return "\u00240.00";
  if (Math.abs(v) >= 0.01) return "\u0024" + v.toFixed(2);
  return "\u0024" + v.toPrecision(2);
};
const level = (p) => (p >= 90 ? "red" : p >= 75 ? "orange" : p >= 50 ? "yellow" : "ok");

function render({ model, el }) {
  el.classList.add("wflo-meter", "tex2jax_ignore", "mathjax_ignore");
  const draw = () => {
    const compact = model.get("compact");
    el.replaceChildren();
    for (const b of model.get("budgets")) {
      const row = document.createElement("div");
      row.className = "wflo-meter-row";
      const label = document.createElement("span");
      label.className = "wflo-meter-label";
      const limited = b.limit_micros < 1e15;
      const used = b.spent_micros + b.reserved_micros;
      label.textContent = limited
        ? `${b.name}: ${usd(b.spent_micros)} spent, ` +
          `${usd(b.reserved_micros)} reserved of ${usd(b.limit_micros)}`
        : `${b.name}: ${usd(b.spent_micros)} spent (no limit)`;
      row.appendChild(label);
      if (limited) {
        const bar = document.createElement("div");
        bar.className = "wflo-meter-bar";
        const fill = document.createElement("div");
        const percent = Math.min(100, (100 * used) / Math.max(1, b.limit_micros));
        fill.className = "wflo-meter-fill wflo-" + level(percent);
        fill.style.width = percent.toFixed(1) + "%";
        bar.appendChild(fill);
        row.appendChild(bar);
      }
      el.appendChild(row);
    }
    const cell = model.get("cell");
    if (cell.name) {
      const line = document.createElement("div");
      line.className = "wflo-meter-cell";
      line.textContent = `cell ${cell.name}: ${usd(cell.cost_micros)}` +
        (cell.saved_micros ? `, saved ${usd(cell.saved_micros)} by the cache` : "");
      el.appendChild(line);
    }
    if (!compact) {
      const calls = model.get("calls");
      if (calls.length) {
        const table = document.createElement("table");
        table.className = "wflo-meter-calls";
        for (const c of calls) {
          const tr = document.createElement("tr");
          for (const text of [c.model, `${c.input_tokens} in / ${c.output_tokens} out`,
                              c.cached ? `cached, saved ${usd(c.saved_micros)}` : usd(c.cost_micros)]) {
            const td = document.createElement("td");
            td.textContent = text;
            tr.appendChild(td);
          }
          table.appendChild(tr);
        }
        el.appendChild(table);
      }
    }
  };
  draw();
  for (const name of ["budgets", "cell", "calls", "compact"]) model.on(`change:${name}`, draw);
}
export default { render };
