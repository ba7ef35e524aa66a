// MathJax 3's configuration for minidl's website (loaded before assets/mathjax/tex-chtml.js).
// Pages: pymdownx.arithmatex wraps each formula as \(...\) or \[...\] in an .arithmatex element.
// Notebooks: nbconvert keeps a markdown cell's $...$ and $$...$$ as they are, in .jp-MarkdownOutput.
// Everything else is left alone, so a $ in prose, code or a notebook's printed output is never
// taken for math: Material's header and page container are ignored, and MathJax looks again only
// inside those two classes (and all they hold).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: "md-header|md-container",
    processHtmlClass: "arithmatex|jp-MarkdownOutput",
  },
};
