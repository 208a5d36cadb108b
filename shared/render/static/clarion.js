/* Clarion's explanation view: the one renderer of the HTML responses, the CLI report and the page.
 *
 * Clarion.render(root, {title, summary, results: [{text, result}]}) draws, for every text, its
 * prediction, the text with each unit shaded by its attribution for the selected label (SHAP's
 * colours: red pushes the score up, blue down, transparent near zero, one symmetric scale shared
 * by all texts so they compare), exact values on hover, the base value -> model output strip and
 * the top positive and negative units. User text only ever reaches the page through textContent,
 * never as markup, so a text holding an image tag with an onerror handler stays text.
 */
(function () {
  "use strict";
  var RED = "255,0,81", BLUE = "0,139,251", TOP = 5;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(value, digits) {
    var s = Number(value).toPrecision(digits || 4);
    return value > 0 ? "+" + s : s;
  }

  function explainedLabels(results) {
    var seen = [];
    results.forEach(function (item) {
      var pairs = item.result.explanation;
      if (!pairs || !pairs.length) return;
      Object.keys(pairs[0][1]).forEach(function (label) { if (seen.indexOf(label) < 0) seen.push(label); });
      Object.keys(item.result.base_values || {}).forEach(function (label) {
        if (seen.indexOf(label) < 0) seen.push(label);
      });
    });
    return seen;
  }

  function valuesFor(result, label) {
    var pairs = result.explanation || [];
    if (!result.base_values || !(label in result.base_values)) return null;
    return pairs.map(function (pair) { return pair[1][label]; });
  }

  function scaleFor(results, label) {
    var scale = 0;
    results.forEach(function (item) {
      (valuesFor(item.result, label) || []).forEach(function (v) { scale = Math.max(scale, Math.abs(v)); });
    });
    return scale || 1;
  }

  function shade(value, scale) {
    var alpha = Math.min(1, Math.abs(value) / scale) * 0.85;
    return "rgba(" + (value >= 0 ? RED : BLUE) + "," + alpha.toFixed(3) + ")";
  }

  function scores(result) {
    var grid = el("div", "scores");
    result.prediction.forEach(function (entry, i) {
      var row = i === 0 ? "top" : "";
      var name = el("span", row, entry.label), bar = el("span", "bar " + row), fill = el("span");
      fill.style.width = (100 * entry.score).toFixed(1) + "%";
      bar.appendChild(fill);
      grid.appendChild(name);
      grid.appendChild(bar);
      grid.appendChild(el("span", row, entry.score.toFixed(4)));
    });
    return grid;
  }

  function textView(text, result, values, scale) {
    var box = el("div", "text"), pairs = result.explanation || [], offsets = result.offsets || [];
    var order = offsets.map(function (_, i) { return i; }).filter(function (i) {
      return offsets[i][1] > offsets[i][0];  // boundary tokens ([CLS], [SEP]) have no characters
    }).sort(function (a, b) { return offsets[a][0] - offsets[b][0]; });
    var cursor = 0;
    order.forEach(function (i) {
      var start = offsets[i][0], end = offsets[i][1];
      if (start < cursor) return;
      if (start > cursor) box.appendChild(document.createTextNode(text.slice(cursor, start)));
      var unit = el("span", "unit", text.slice(start, end));
      if (values) {
        var v = values[i];
        unit.style.backgroundColor = shade(v, scale);
        unit.className = "unit " + (v > 0 ? "pos" : v < 0 ? "neg" : "zero");
        unit.dataset.value = String(v);
        unit.title = pairs[i][0] + ": " + fmt(v, 6);
      }
      box.appendChild(unit);
      cursor = end;
    });
    if (!order.length) box.appendChild(document.createTextNode(text));
    else if (cursor < text.length) {
      var rest = text.slice(cursor);
      if (result.truncated && rest.trim()) {
        box.appendChild(el("span", "unseen", rest));
        box.lastChild.title = "past the model's maximum length: not seen";
      } else box.appendChild(document.createTextNode(rest));
    }
    return box;
  }

  function strip(result, label, values) {
    var base = result.base_values[label], output = result.model_output[label];
    var up = 0, down = 0;
    values.forEach(function (v) { if (v > 0) up += v; else down += v; });
    var box = el("div", "strip");
    box.appendChild(el("div", "", label + ": base value " + base.toFixed(4) + "  \u2192  model output " +
      output.toFixed(4) + "   (" + fmt(up) + " up, " + fmt(down) + " down)"));
    var lo = Math.min(base, output, base + down, 0), hi = Math.max(base, output, base + up, 1);
    var track = el("div", "track"), span = hi - lo || 1;
    [[base, base + up, RED], [base + up, base + up + down, BLUE]].forEach(function (seg) {
      var a = Math.min(seg[0], seg[1]), b = Math.max(seg[0], seg[1]), move = el("div", "move");
      move.style.left = (100 * (a - lo) / span) + "%";
      move.style.width = Math.max(0.5, 100 * (b - a) / span) + "%";
      move.style.backgroundColor = "rgba(" + seg[2] + ",0.75)";
      track.appendChild(move);
    });
    box.appendChild(track);
    return box;
  }

  function tops(result, values) {
    var box = el("div", "tops"), units = (result.explanation || []).map(function (p) { return p[0]; });
    var offsets = result.offsets || [];
    var ranked = values.map(function (v, i) { return i; }).filter(function (i) {
      return !offsets[i] || offsets[i][1] > offsets[i][0];
    });
    [["Pushes up", function (a, b) { return values[b] - values[a]; }, 1],
     ["Pushes down", function (a, b) { return values[a] - values[b]; }, -1]].forEach(function (spec) {
      var col = el("div"), list = el("ol");
      col.appendChild(el("strong", "", spec[0]));
      ranked.slice().sort(spec[1]).filter(function (i) { return values[i] * spec[2] > 0; })
        .slice(0, TOP).forEach(function (i) { list.appendChild(el("li", "", units[i] + "  " + fmt(values[i]))); });
      if (!list.children.length) list.appendChild(el("li", "note", "none"));
      col.appendChild(list);
      box.appendChild(col);
    });
    return box;
  }

  function card(item, index, label, scale) {
    var result = item.result, box = el("div", "card"), head = el("div", "head");
    box.dataset.index = String(index);
    head.appendChild(el("span", "", "#" + (index + 1) + "  " + result.prediction[0].label));
    var params = result.explanation_parameters;
    if (params) {
      var windows = params.windows > 1 ? ", " + params.windows + " windows of " + params.window_tokens + " tokens" : "";
      head.appendChild(el("span", "", params.granularity + " granularity, " + params.evaluations +
        " evaluations (max_evals " + params.max_evals + ")" + windows + ", " + params.output + ", " +
        params.precision));
    }
    box.appendChild(head);
    box.appendChild(scores(result));
    var values = label ? valuesFor(result, label) : null;
    box.appendChild(textView(item.text, result, values, scale));
    if (values) {
      box.appendChild(strip(result, label, values));
      box.appendChild(tops(result, values));
    } else if (result.explanation) {
      box.appendChild(el("div", "note", "label " + label + " was not explained for this text"));
    }
    return box;
  }

  function summary(results) {
    var counts = {}, total = 0, table = el("table", "summary");
    results.forEach(function (item) {
      var top = item.result.prediction[0];
      counts[top.label] = (counts[top.label] || 0) + 1;
      total += top.score;
    });
    var head = el("tr");
    ["predicted label", "texts"].forEach(function (h) { head.appendChild(el("th", "", h)); });
    table.appendChild(head);
    Object.keys(counts).sort(function (a, b) { return counts[b] - counts[a]; }).forEach(function (label) {
      var row = el("tr");
      row.appendChild(el("td", "", label));
      row.appendChild(el("td", "", counts[label]));
      table.appendChild(row);
    });
    var last = el("tr");
    last.appendChild(el("td", "", "mean confidence (" + results.length + " texts)"));
    last.appendChild(el("td", "", results.length ? (total / results.length).toFixed(4) : "-"));
    table.appendChild(last);
    return table;
  }

  function render(root, data) {
    var results = data.results || [], labels = explainedLabels(results);
    root.textContent = "";
    if (data.title) root.appendChild(el("h1", "", data.title));
    if (data.summary) root.appendChild(summary(results));
    var toolbar = el("div", "toolbar"), cards = el("div", "cards");
    var first = results.length && results[0].result.prediction[0].label;
    var state = { label: labels.indexOf(first) >= 0 ? first : labels[0] };
    if (labels.length) {
      var chooser = el("label", "", "Attributions for "), select = el("select", "label-select");
      labels.forEach(function (label) {
        var option = el("option", "", label);
        option.value = label;
        select.appendChild(option);
      });
      select.value = state.label;
      select.addEventListener("change", function () { state.label = select.value; draw(); });
      chooser.appendChild(select);
      toolbar.appendChild(chooser);
      var legend = el("span", "legend");
      legend.appendChild(el("span", "scale-low"));
      legend.appendChild(el("span", "ramp"));
      legend.appendChild(el("span", "scale-high"));
      toolbar.appendChild(legend);
      toolbar.appendChild(el("span", "note", "red raises the label's score, blue lowers it; hover for values"));
      root.appendChild(toolbar);
    }
    root.appendChild(cards);
    function draw() {
      var scale = state.label ? scaleFor(results, state.label) : 1;
      var low = root.querySelector(".scale-low"), high = root.querySelector(".scale-high");
      if (low) { low.textContent = fmt(-scale, 3); high.textContent = fmt(scale, 3); }
      cards.textContent = "";
      results.forEach(function (item, i) { cards.appendChild(card(item, i, state.label, scale)); });
    }
    draw();
    return { select: function (label) { state.label = label; draw(); } };
  }

  window.Clarion = { render: render };
})();
