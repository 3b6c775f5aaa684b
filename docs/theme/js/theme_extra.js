// The readthedocs theme styles tables that carry the class "docutils", which Markdown's
// tables do not: give it to them. (Debian's MkDocs leaves this file of the theme out.)
document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("div.rst-content table").forEach(function (table) {
        table.classList.add("docutils");
    });
});
