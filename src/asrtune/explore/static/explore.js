// asrtune explore: filter, sort, step through and play the rows Python rendered. It computes nothing else.
(function () {
  "use strict";
  const index = JSON.parse(document.getElementById("explore-index").textContent);

  // Sort orders: a key per row (null: last), then the set's order.
  const SORTS = {
    "order": () => 0,
    "delta-desc": (r) => (r.d === null ? null : -r.d),
    "delta-asc": (r) => r.d,
    "before-desc": (r) => (r.wb === null ? null : -r.wb),
    "after-desc": (r) => (r.wa === null ? null : -r.wa),
    "id": (r) => r.id,
  };

  function compare(a, b) {
    if (a === b) return 0;
    if (a === null) return 1;
    if (b === null) return -1;
    return a < b ? -1 : 1;
  }

  // One set's section: its controls, rows and the row the keyboard is on.
  function View(section, data) {
    const rows = data.rows;
    const list = section.querySelector(".rows");
    const elements = Array.from(list.children);
    const shown = section.querySelector(".shown");
    const control = (name) => section.querySelector("." + name);
    const state = { cat: "all", flag: "", term: "", field: "", query: "", sort: "order" };
    let visible = elements.slice();
    let current = -1;

    function keep(row) {
      if (state.cat !== "all" && row.cat !== state.cat) return false;
      if (state.flag && !row.flags.includes(state.flag)) return false;
      if (state.term && !row.terms.includes(state.term)) return false;
      if (state.field) {
        const [key, value] = state.field.split(/=(.*)/s);
        if (row.fields[key] !== value) return false;
      }
      return !state.query || row.q.includes(state.query);
    }

    let order = rows.map((row, i) => i);
    let sorted = "order";

    function apply() {
      if (state.sort !== sorted) {
        const key = SORTS[state.sort];
        order = rows.map((row, i) => i).sort((a, b) => compare(key(rows[a]), key(rows[b])) || a - b);
        list.replaceChildren(...order.map((i) => elements[i]));
        sorted = state.sort;
      }
      visible = [];
      for (const i of order) {
        const show = keep(rows[i]);
        elements[i].hidden = !show;
        if (show) visible.push(elements[i]);
      }
      shown.textContent = visible.length + " of " + rows.length + " shown";
      section.dataset.shown = String(visible.length);
      current = visible.indexOf(section.querySelector("article.current"));
    }

    section.querySelectorAll("[data-filter]").forEach((button) => {
      button.addEventListener("click", () => {
        section.querySelectorAll("[data-filter]").forEach((b) => b.classList.toggle("on", b === button));
        state.cat = button.dataset.filter;
        apply();
      });
    });
    for (const name of ["flag", "term", "field", "sort"]) {
      const select = control(name);
      if (select) select.addEventListener("change", () => { state[name] = select.value; apply(); });
    }
    control("search").addEventListener("input", (event) => {
      state.query = event.target.value.trim().toLowerCase();
      apply();
    });

    // The audio element is made when a row is first used: a thousand media elements would slow the page.
    function player(article) {
      const holder = article.querySelector(".player[data-src]");
      if (!holder) return null;
      let audio = holder.querySelector("audio");
      if (!audio) {
        audio = document.createElement("audio");
        audio.controls = true;
        audio.preload = "metadata";
        audio.src = holder.dataset.src;
        holder.replaceChildren(audio);
      }
      return audio;
    }

    // A clip that cannot play (a missing file, a format the browser lacks) says so on its player.
    function play(audio) {
      audio.play().catch((error) => { audio.title = "cannot play: " + error.message; });
    }

    function select(article, scroll) {
      section.querySelectorAll("article.current").forEach((a) => a.classList.remove("current"));
      article.classList.add("current");
      current = visible.indexOf(article);
      player(article);
      if (scroll) article.scrollIntoView({ block: "nearest" });
    }

    list.addEventListener("click", (event) => {
      const article = event.target.closest("article.utt");
      if (!article) return;
      select(article, false);
      if (event.target.closest("button.play")) play(player(article));
    });

    return {
      step(by) {
        if (!visible.length) return;
        const next = Math.min(visible.length - 1, Math.max(0, current + by));
        select(visible[next], true);
      },
      toggle() {
        const article = visible[current];
        const audio = article && player(article);
        if (audio) audio.paused ? play(audio) : audio.pause();
      },
      search: () => control("search").focus(),
    };
  }

  const sections = Array.from(document.querySelectorAll("section.view"));
  const views = sections.map((section, i) => View(section, index.views[i]));
  const picker = document.getElementById("view-picker");
  let active = 0;
  picker.addEventListener("change", () => {
    active = Number(picker.value);
    sections.forEach((section, i) => { section.hidden = i !== active; });
  });

  document.addEventListener("keydown", (event) => {
    const typing = event.target.matches("input, select, textarea");
    if (event.key === "Escape" && typing) { event.target.blur(); return; }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const view = views[active];
    if (event.key === "j") view.step(1);
    else if (event.key === "k") view.step(-1);
    else if (event.key === " ") view.toggle();
    else if (event.key === "/") view.search();
    else return;
    event.preventDefault();
  });
})();
