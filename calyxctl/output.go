package calyxctl

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Output formats.
const (
	Table = "table"
	JSON  = "json"
	YAML  = "yaml"
)

// CheckFormat rejects an output format the commands do not know.
func CheckFormat(f string) error {
	switch f {
	case Table, JSON, YAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q: use -o table, json or yaml", f)
}

// render writes v as JSON or YAML, or calls table with a tabwriter whose
// columns it aligns.
func render(w io.Writer, format string, v any, table func(w io.Writer)) error {
	switch format {
	case JSON:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding JSON: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case YAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encoding YAML: %w", err)
		}
		_, err = w.Write(b)
		return err
	case Table, "":
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return CheckFormat(format)
}

// orNone is s, or "-" for an empty cell so that columns stay aligned.
func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
