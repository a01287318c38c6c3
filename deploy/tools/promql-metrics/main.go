// promql-metrics reads a JSON array of PromQL expressions on stdin and prints, for each,
// the metric names its selectors read, as parsed by Prometheus's own PromQL parser (so
// deploy-check needs no PromQL scanner of its own). Output: a JSON array, one object per
// expression, {"expr", "metrics"} or {"expr", "error"}; the exit status is 0 either way
// (the caller decides), 2 when stdin is not a JSON array of strings.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	Expr    string   `json:"expr"`
	Metrics []string `json:"metrics,omitempty"`
	Error   string   `json:"error,omitempty"`
}

func main() {
	var exprs []string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintf(os.Stderr, "promql-metrics: stdin must be a JSON array of strings: %v\n", err)
		os.Exit(2)
	}
	out := make([]result, 0, len(exprs))
	for _, e := range exprs {
		out = append(out, names(e))
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "promql-metrics: %v\n", err)
		os.Exit(1)
	}
}

func names(e string) result {
	// Default options: the stable language only (no experimental functions), as a
	// Prometheus server runs by default.
	ast, err := parser.NewParser(parser.Options{}).ParseExpr(e)
	if err != nil {
		return result{Expr: e, Error: err.Error()}
	}
	seen := map[string]bool{}
	var bad string
	parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		if name == "" {
			// {__name__="x"} is a name too; a regex over names cannot be checked.
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName {
					if m.Type != labels.MatchEqual {
						bad = "selector matches metric names by regex: " + m.String()
					}
					name = m.Value
				}
			}
		}
		if name != "" {
			seen[name] = true
		}
		return nil
	})
	if bad != "" {
		return result{Expr: e, Error: bad}
	}
	r := result{Expr: e, Metrics: []string{}}
	for n := range seen {
		r.Metrics = append(r.Metrics, n)
	}
	sort.Strings(r.Metrics)
	return r
}
