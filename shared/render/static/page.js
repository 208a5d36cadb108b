/* The page of GET /: build a request from the form, send it to this server, draw the answer with
 * Clarion.render (the same renderer as the HTML responses). A job is followed by polling its URL. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var last = null, busy = false;

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = "status" + (isError ? " error" : "");
  }

  function headers() {
    var h = { "Content-Type": "application/json", "Accept": "application/json" };
    var key = $("api-key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function options() {
    var body = { data: $("text").value, explain: true, granularity: $("granularity").value,
      precision: $("precision").value, long_text: $("long-text").value };
    var evals = parseInt($("max-evals").value, 10);
    if (!isNaN(evals)) body.max_evals = evals;
    var mode = $("labels-mode").value;
    if (mode === "chosen") {
      body.labels = Array.prototype.filter.call(document.querySelectorAll("#label-choices input"),
        function (box) { return box.checked; }).map(function (box) { return box.value; });
    } else body.labels = mode;
    return body;
  }

  function call(method, url, body) {
    return fetch(url, { method: method, headers: headers(), body: body ? JSON.stringify(body) : undefined })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (json) {
          if (!response.ok) {
            var message = json.error ? json.error.message : "HTTP " + response.status;
            throw new Error(message);
          }
          return json;
        });
      });
  }

  function show(text, result) {
    last = result;
    $("download").disabled = false;
    window.Clarion.render($("result"), { results: [{ text: text, result: result }] });
  }

  function run(job) {
    if (busy) return;
    var body = options(), text = body.data;
    if (!text.trim()) { setStatus("Type or paste a text first.", true); return; }
    busy = true;
    $("explain").disabled = $("submit-job").disabled = true;
    setStatus(job ? "Submitting the job\u2026" : "Explaining\u2026");
    var done = function () { busy = false; $("explain").disabled = $("submit-job").disabled = false; };
    var work = job ? call("POST", "explanations", body).then(follow)
      : call("POST", "invocations", body).then(function (result) { return { result: result }; });
    work.then(function (record) {
      var result = record.result, params = result.explanation_parameters;
      show(text, result);
      var said = params ? "explained with " + params.evaluations + " evaluations." : "classified.";
      setStatus((record.id ? "Job " + record.id + " succeeded: " : "Done: ") + said);
    }).catch(function (error) { setStatus(error.message, true); }).then(done);
  }

  function follow(record) {
    setStatus("Job " + record.id + ": " + record.status);
    if (record.status === "succeeded") return Promise.resolve(record);
    if (record.status === "failed" || record.status === "cancelled") {
      var why = record.error ? ": " + record.error.message : "";
      return Promise.reject(new Error("Job " + record.id + " " + record.status + why));
    }
    return new Promise(function (resolve) { setTimeout(resolve, 1000); })
      .then(function () { return call("GET", "explanations/" + record.id); })
      .then(follow);
  }

  function download() {
    if (!last) return;
    var blob = new Blob([JSON.stringify(last, null, 2)], { type: "application/json" });
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "clarion-explanation.json";
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 0);
  }

  function loadModel() {
    fetch("ping").then(function (r) { return r.json(); }).then(function (health) {
      if (health.model) $("model").textContent = health.model;
      var box = $("label-choices");
      box.textContent = "";
      (health.labels || []).forEach(function (label) {
        var item = document.createElement("label"), input = document.createElement("input");
        input.type = "checkbox";
        input.value = label;
        input.checked = true;
        item.appendChild(input);
        item.appendChild(document.createTextNode(" " + label));
        box.appendChild(item);
      });
      if (health.status !== "healthy") {
        setStatus("The model is " + health.status + "; try again in a moment.", health.status === "failed");
        if (health.status === "loading") setTimeout(loadModel, 2000);
      }
    }).catch(function () { setStatus("The server does not answer /ping.", true); });
  }

  $("form").addEventListener("submit", function (event) { event.preventDefault(); run(false); });
  $("submit-job").addEventListener("click", function () { run(true); });
  $("download").addEventListener("click", download);
  $("labels-mode").addEventListener("change", function () {
    $("label-choices").hidden = $("labels-mode").value !== "chosen";
  });
  $("label-choices").hidden = true;
  loadModel();
})();
