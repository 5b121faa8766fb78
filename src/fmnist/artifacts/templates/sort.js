// Click a column heading to sort the table by it; click again to reverse. Cells may carry data-sort
// (a number, or text) so that "91.2%" and "" sort as numbers.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var key = function (row) {
        var cell = row.cells[column];
        var value = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
        var number = parseFloat(value);
        return value !== "" && !isNaN(number) && isFinite(value) ? number : value.toLowerCase();
      };
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return (typeof x === "number" ? -1 : 1) * (ascending ? 1 : -1); }
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});
