// MathJax 3's configuration for minidl's website (loaded before assets/mathjax/tex-chtml.js).
// Pages: pymdownx.arithmatex wraps each formula as \(...\) or \[...\] in an .arithmatex element.
// Notebooks: nbconvert keeps a markdown cell's $...$ and $$...$$ as they are, in .jp-MarkdownOutput.
// Everything else is left alone, so a $ in prose or code is never taken for math.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|jp-MarkdownOutput",
  },
};
