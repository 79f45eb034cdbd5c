package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// envName is the environment variable that can give the flag f its
// value: CORRAL_ and the name in upper case with - as _, and an S after it
// for a flag that may be given more than once (CORRAL_RULES for -rule).
func envName(f *flag.Flag) string {
	name := "CORRAL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
	if _, ok := f.Value.(listValue); ok {
		name += "S"
	}
	return name
}

// listValue is a flag value that may be given more than once. Its
// environment variable holds one value per line; blank lines are skipped.
type listValue interface {
	flag.Value
	list()
}

// setFromEnv sets every flag that is not on the command line from its
// environment variable, if getenv has it, so a flag always beats the
// environment. It returns the names of the flags it set, or an error naming
// the first variable whose value the flag rejects.
func setFromEnv(fs *flag.FlagSet, getenv func(string) (string, bool)) (map[string]bool, error) {
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	fromEnv := map[string]bool{}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || onCommandLine[f.Name] {
			return
		}
		v, ok := getenv(envName(f))
		if !ok {
			return
		}
		values := []string{v}
		if _, list := f.Value.(listValue); list {
			values = nil
			for _, line := range strings.Split(v, "\n") {
				if line = strings.TrimSpace(line); line != "" {
					values = append(values, line)
				}
			}
		}
		for _, v := range values {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: invalid value %q for -%s: %v", envName(f), v, f.Name, e)
				return
			}
		}
		fromEnv[f.Name] = true
	})
	return fromEnv, err
}

// printFlags writes what fs.PrintDefaults does, with each flag's
// environment variable after its default.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		var b strings.Builder
		b.WriteString("  -" + f.Name)
		typ, usage := flag.UnquoteUsage(f)
		if typ != "" {
			b.WriteString(" " + typ)
		}
		b.WriteString("\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t"))
		switch {
		case f.DefValue == "" || f.DefValue == "0" || f.DefValue == "0s" || f.DefValue == "false":
			// The zero value goes without saying, as in PrintDefaults.
		case typ == "string":
			fmt.Fprintf(&b, " (default %q)", f.DefValue)
		default:
			fmt.Fprintf(&b, " (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "%s (env %s)\n", b.String(), envName(f))
	})
}
