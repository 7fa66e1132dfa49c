// MathJax 3 configuration. MathJax itself (assets/mathjax/tex-svg-full.js) is copied into the site at
// build time from the django-static-mathjax wheel: nothing is loaded from a network. SVG output needs no
// web fonts. Only elements of class "arithmatex" (pymdownx.arithmatex, generic mode) are typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    // an unknown macro or a TeX syntax error must show as an error node (mjx-merror), which the browser
    // test looks for, not be rendered quietly in red or as its source
    packages: { "[-]": ["noundefined", "noerrors"] }
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
    enableMenu: false
  },
  svg: { fontCache: "global" },
  startup: {
    pageReady: function () {
      return MathJax.startup.defaultPageReady().then(function () {
        document.documentElement.setAttribute("data-math", "typeset");
      });
    }
  }
};
