package calyxctl

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// svgNode is an SVG element. encoding/xml escapes every name and address, so
// a pod called "<x>" cannot break the document.
type svgNode struct {
	XMLName  xml.Name
	Attrs    []xml.Attr `xml:",attr"`
	Text     string     `xml:",chardata"`
	Children []svgNode
}

func el(name string, text string, kv ...any) svgNode {
	n := svgNode{XMLName: xml.Name{Local: name}, Text: text}
	for i := 0; i+1 < len(kv); i += 2 {
		var v string
		switch x := kv[i+1].(type) {
		case int:
			v = strconv.Itoa(x)
		case string:
			v = x
		default:
			v = fmt.Sprint(x)
		}
		n.Attrs = append(n.Attrs, xml.Attr{Name: xml.Name{Local: kv[i].(string)}, Value: v})
	}
	return n
}

func (n *svgNode) add(c ...svgNode) { n.Children = append(n.Children, c...) }

// Diagram geometry.
const (
	colWidth = 420
	boxW     = 380
	boxH     = 64
	rowH     = 88
	margin   = 30
	headH    = 90
	gap      = 220 // between the nodes: room for the underlay's label
)

// SVG draws p like the article's diagram: the source node on the left,
// its hops top to bottom; the underlay between the NICs; the destination
// node on the right, its hops bottom to top up to the pod.
func SVG(w io.Writer, p Path) error {
	left, right := splitHops(p)
	d := newDiagram(p, max(len(left), len(right)), len(right) > 0)
	lp := d.column(0, p.From.Node, p.From.NodeIP, left, false)
	for j := 1; j < len(lp); j++ {
		d.arrow(lp[j].x+boxW/2, lp[j-1].y+boxH, lp[j].x+boxW/2, lp[j].y)
	}
	if len(right) > 0 {
		rp := d.column(1, p.To.Node, p.To.NodeIP, right, true)
		for j := 1; j < len(rp); j++ {
			d.arrow(rp[j].x+boxW/2, rp[j-1].y, rp[j].x+boxW/2, rp[j].y+boxH)
		}
		a, b := lp[len(lp)-1], rp[0]
		d.arrow(a.x+boxW, a.y+boxH/2, b.x, b.y+boxH/2, underlayLabel(p)...)
	}
	return d.encode(w)
}

// splitHops puts the source node's hops (all of them, on one node) on the
// left and the destination node's on the right.
func splitHops(p Path) (left, right []Hop) {
	for _, h := range p.Hops {
		if h.Place == PlaceSrcPod || h.Place == PlaceSrcNode || p.SameNode {
			left = append(left, h)
		} else {
			right = append(right, h)
		}
	}
	return left, right
}

// underlayLabel is what the arrow between the nodes' NICs says.
func underlayLabel(p Path) []string {
	if p.Encapsulated {
		return []string{"IP-in-IP (proto 4)", "outer " + p.From.NodeIP + " → " + p.To.NodeIP, "inner " + p.From.IP + " → " + p.To.IP}
	}
	return []string{"underlay, plain", p.From.IP + " → " + p.To.IP}
}

// diagram is the SVG being drawn for one path.
type diagram struct {
	p      Path
	svg    svgNode
	rows   int
	height int
}

// point is the top-left corner of a hop's box.
type point struct{ x, y int }

// newDiagram is the document with its frame: the arrow marker, the
// background, the title and the path's problem, sized for rows hops in
// one column, or two.
func newDiagram(p Path, rows int, twoColumns bool) *diagram {
	cols := 1
	if twoColumns {
		cols = 2
	}
	title := fmt.Sprintf("%s %s → %s %s", p.From.Pod, p.From.IP, p.To.Pod, p.To.IP)
	width := 2*margin + cols*colWidth + (cols-1)*gap
	width = max(width, 2*margin+len([]rune(title))*9) // 15px monospace: about 9px a character
	height := headH + rows*rowH + margin
	svg := el("svg", "", "xmlns", "http://www.w3.org/2000/svg", "width", width, "height", height,
		"viewBox", fmt.Sprintf("0 0 %d %d", width, height), "font-family", "monospace")
	marker := el("marker", "", "id", "arrow", "viewBox", "0 0 10 10", "refX", 9, "refY", 5, "markerWidth", 8, "markerHeight", 8, "orient", "auto-start-reverse")
	marker.add(el("path", "", "d", "M 0 0 L 10 5 L 0 10 z", "fill", "#333"))
	defs := el("defs", "")
	defs.add(marker)
	svg.add(defs, el("rect", "", "width", width, "height", height, "fill", "white"))
	svg.add(el("text", title, "x", margin, "y", 24, "font-size", 15, "font-weight", "bold"))
	if p.Problem != "" {
		svg.add(el("text", "problem: "+p.Problem, "x", margin, "y", 42, "font-size", 11, "fill", "#b00020"))
	}
	return &diagram{p: p, svg: svg, rows: rows, height: height}
}

// column draws node i's frame and its hops, top to bottom or (upward)
// bottom to top, and returns where each hop's box is.
func (d *diagram) column(i int, nodeName, nodeIP string, hops []Hop, upward bool) []point {
	x := margin + i*(colWidth+gap)
	d.svg.add(el("rect", "", "x", x, "y", 52, "width", colWidth, "height", d.height-52-margin/2, "rx", 10,
		"fill", "#f7f7f7", "stroke", "#999"))
	d.svg.add(el("text", fmt.Sprintf("node %s  %s", nodeName, nodeIP), "x", x+12, "y", 72, "font-size", 13, "font-weight", "bold"))
	var ps []point
	for j, h := range hops {
		row := j
		if upward {
			row = d.rows - 1 - j
		}
		at := point{x + (colWidth-boxW)/2, headH + row*rowH}
		ps = append(ps, at)
		d.svg.add(d.hop(h, at))
	}
	return ps
}

// hop is one hop's box: a pod's interface, a device, or a route lookup.
func (d *diagram) hop(h Hop, at point) svgNode {
	fill := "#e6f4ea" // a device
	switch {
	case h.Place == PlaceSrcPod || h.Place == PlaceDstPod:
		fill = "#e8f0fe"
	case h.Device == "":
		fill = "#fff8e1" // a route lookup
	}
	g := el("g", "", "class", "hop")
	g.add(el("rect", "", "x", at.x, "y", at.y, "width", boxW, "height", boxH, "rx", 6, "fill", fill, "stroke", "#555"))
	head := "route lookup"
	if h.Device != "" {
		head = h.Device
		if h.Address != "" {
			head += "  " + h.Address
		}
	}
	if h.Place == PlaceSrcPod || h.Place == PlaceDstPod {
		head = "pod " + podOf(d.p, h.Place) + "  " + head
	}
	g.add(el("text", head, "x", at.x+8, "y", at.y+17, "font-size", 12, "font-weight", "bold"))
	for k, line := range wrap(h.What, 60, 3) {
		g.add(el("text", line, "x", at.x+8, "y", at.y+32+k*12, "font-size", 10))
	}
	return g
}

// arrow draws an arrow from (x1, y1) to (x2, y2), its label lines above
// its middle.
func (d *diagram) arrow(x1, y1, x2, y2 int, label ...string) {
	d.svg.add(el("line", "", "x1", x1, "y1", y1, "x2", x2, "y2", y2, "stroke", "#333", "stroke-width", 2, "marker-end", "url(#arrow)"))
	for i, l := range label {
		d.svg.add(el("text", l, "x", (x1+x2)/2, "y", min(y1, y2)-8-12*(len(label)-1-i), "font-size", 10, "fill", "#333", "text-anchor", "middle"))
	}
}

// encode writes the document.
func (d *diagram) encode(w io.Writer) error {
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", " ")
	if err := enc.Encode(d.svg); err != nil {
		return fmt.Errorf("encoding the SVG: %w", err)
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// WriteSVGFile writes SVG(p) to path.
func WriteSVGFile(path string, p Path) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if err := SVG(f, p); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func podOf(p Path, place string) string {
	if place == PlaceSrcPod {
		return p.From.Pod
	}
	return p.To.Pod
}

// wrap splits s into at most n lines of about width characters at spaces.
func wrap(s string, width, n int) []string {
	var lines []string
	var cur strings.Builder
	for _, word := range strings.Fields(s) {
		if cur.Len() > 0 && cur.Len()+1+len(word) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(word)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	if len(lines) > n {
		lines = append(lines[:n-1], strings.Join(lines[n-1:], " "))
	}
	return lines
}
