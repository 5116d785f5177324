// The hover box of the embedding map and the point map: the point's image cut from a sprite
// sheet (written by dashboard/pointmap.py's write_sheets) above the point's text.
// convlensTip() adds the box (<div id="tip">, styled by hovertip.css) to the page;
// .show(i, thumbs, html) fills and shows it; .el is the element: el.dataset.index is the point
// and el.dataset.thumbLoaded turns "1" once the sheet has loaded (the browser tests wait on it).
window.convlensTip = function () {
  "use strict";
  var tip = document.createElement("div");
  tip.id = "tip";
  tip.innerHTML = '<div class="thumb"></div><div class="text"></div>';
  document.body.appendChild(tip);
  var thumb = tip.querySelector(".thumb"), text = tip.querySelector(".text"), loaded = {};
  function setThumb(i, th) {
    tip.dataset.index = String(i);
    if (!(th && i < th.n)) { tip.classList.add("nothumb"); return; }
    var k = Math.floor(i / th.per_sheet), pos = i % th.per_sheet, d = th.display;
    var url = th.base + "/" + k + "." + th.ext;
    tip.classList.remove("nothumb");
    thumb.style.backgroundImage = "url('" + url + "')";
    thumb.style.backgroundSize = (th.cols * d) + "px auto";
    thumb.style.backgroundPosition = (-(pos % th.cols) * d) + "px " + (-Math.floor(pos / th.cols) * d) + "px";
    thumb.style.imageRendering = th.pixelated ? "pixelated" : "auto";
    if (loaded[url] === true) { tip.dataset.thumbLoaded = "1"; return; }
    tip.dataset.thumbLoaded = "0";
    if (loaded[url] === undefined) {
      loaded[url] = false;                          // loading
      var img = new Image();
      img.onload = function () {
        loaded[url] = true;
        if (thumb.style.backgroundImage.indexOf(url) >= 0) tip.dataset.thumbLoaded = "1";
      };
      img.onerror = function () { loaded[url] = undefined; };
      img.src = url;
    }
  }
  return {
    el: tip,
    show: function (i, th, html) { setThumb(i, th); text.innerHTML = html; tip.style.display = "block"; },
    hide: function () { tip.style.display = "none"; }
  };
};
