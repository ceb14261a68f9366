/* A small line chart on <canvas>, written for the modcoord dashboard (no library).
 *
 *   const chart = new LineChart(canvas);
 *   chart.draw([{name, color, points: [[t_seconds, value], ...]}, ...],
 *              {from: t0, to: t1, format: (v) => "1.2 ms"});
 *
 * Draws a y grid with labels, time labels along x, one line per series (a gap where
 * consecutive points are more than `gapFactor` resolutions apart) and sets
 * canvas.dataset.points to the number of points drawn (the tests read it).
 */
"use strict";

const CHART_COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c",
                      "#319795", "#b7791f", "#718096", "#e53e3e", "#3182ce"];

class LineChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.padding = {left: 52, right: 10, top: 8, bottom: 20};
  }

  /* Size the backing store to the element's CSS size times the pixel ratio. */
  resize() {
    const ratio = window.devicePixelRatio || 1;
    const rect = this.canvas.getBoundingClientRect();
    const width = Math.max(50, Math.round(rect.width));
    const height = Math.max(50, Math.round(rect.height));
    if (this.canvas.width !== width * ratio || this.canvas.height !== height * ratio) {
      this.canvas.width = width * ratio;
      this.canvas.height = height * ratio;
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return {ctx, width, height};
  }

  draw(series, options) {
    const {ctx, width, height} = this.resize();
    const style = getComputedStyle(document.documentElement);
    const textColor = style.getPropertyValue("--muted").trim() || "#666";
    const lineColor = style.getPropertyValue("--line").trim() || "#ddd";
    const format = options.format || ((v) => String(v));
    const from = options.from;
    const to = options.to;
    const resolution = options.resolution || 1;
    const gap = resolution * (options.gapFactor || 3);
    ctx.clearRect(0, 0, width, height);

    let lo = Infinity;
    let hi = -Infinity;
    let count = 0;
    for (const s of series) {
      for (const [t, v] of s.points) {
        if (t < from || v === null || !Number.isFinite(v)) continue;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    if (lo === Infinity) {
      this.canvas.dataset.points = "0";
      return 0;
    }
    if (lo > 0 && lo < hi * 0.5) lo = 0; // a baseline at zero unless it hides the detail
    if (hi === lo) {
      hi = lo === 0 ? 1 : hi + Math.abs(hi) * 0.1;
      lo = lo === 0 ? 0 : lo - Math.abs(lo) * 0.1;
    }
    const p = this.padding;
    const plotW = width - p.left - p.right;
    const plotH = height - p.top - p.bottom;
    const x = (t) => p.left + ((t - from) / Math.max(1, to - from)) * plotW;
    const y = (v) => p.top + plotH - ((v - lo) / (hi - lo)) * plotH;

    // grid and labels
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = textColor;
    ctx.strokeStyle = lineColor;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const steps = 4;
    for (let i = 0; i <= steps; i++) {
      const v = lo + ((hi - lo) * i) / steps;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(p.left, yy);
      ctx.lineTo(width - p.right, yy);
      ctx.stroke();
      ctx.fillText(format(v), p.left - 4, yy);
    }
    ctx.textBaseline = "top";
    const ticks = width < 360 ? 2 : 4;
    for (let i = 0; i <= ticks; i++) {
      const t = from + ((to - from) * i) / ticks;
      ctx.textAlign = i === 0 ? "left" : i === ticks ? "right" : "center";
      ctx.fillText(timeLabel(t, to - from), x(t), height - p.bottom + 5);
    }

    // lines
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    series.forEach((s, index) => {
      ctx.strokeStyle = s.color || CHART_COLORS[index % CHART_COLORS.length];
      ctx.beginPath();
      let previous = null;
      for (const [t, v] of s.points) {
        if (t < from || v === null || !Number.isFinite(v)) continue;
        const px = x(t);
        const py = y(v);
        if (previous === null || t - previous > gap) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
        previous = t;
        count++;
      }
      ctx.stroke();
    });
    this.canvas.dataset.points = String(count);
    return count;
  }
}

/* "14:05", "14:05:30" for short spans, "Mon 14:05" or "3 Dec" for long ones. */
function timeLabel(t, span) {
  const d = new Date(t * 1000);
  const two = (n) => String(n).padStart(2, "0");
  if (span <= 1800) return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  if (span <= 2 * 86400) return `${two(d.getHours())}:${two(d.getMinutes())}`;
  return d.toLocaleDateString(undefined, {day: "numeric", month: "short"});
}

window.LineChart = LineChart;
window.CHART_COLORS = CHART_COLORS;
