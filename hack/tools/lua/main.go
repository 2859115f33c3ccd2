// argocd-lua runs an Argo CD resource health script the way Argo CD's controller does, so the
// script can be tested without a running Argo CD:
//
//	argocd-lua -script deploy/argocd/health.lua -object policy.json
//
// What is reproduced (see the Argo CD docs on resource health customizations):
//   - a Lua 5.1 VM (github.com/yuin/gopher-lua, the interpreter Argo CD embeds);
//   - only the base, package and table libraries plus a reduced os library are opened, as for a
//     health check without useOpenLibs; string, math, io, debug and channel stay closed, so a
//     script that would only work with useOpenLibs fails here too;
//   - the object is bound to the global `obj` (JSON objects become tables, arrays 1-based tables);
//   - the script must finish within one second;
//   - the value it returns must be a table whose `status` is one of Healthy, Progressing,
//     Degraded, Suspended, Missing or Unknown.
//
// The result is printed as one JSON object: {"status": "...", "message": "..."}. Exit status 1
// means the script failed or returned something Argo CD would not accept.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	lua "github.com/yuin/gopher-lua"
)

var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

// osAllowed are the os functions left to scripts: reading the clock only.
var osAllowed = map[string]bool{"time": true, "date": true, "clock": true, "difftime": true}

type result struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

func main() {
	script := flag.String("script", "", "path of the Lua health script")
	object := flag.String("object", "-", "path of the object as JSON ('-' for stdin)")
	flag.Parse()
	if *script == "" {
		fail("-script is required")
	}
	src, err := os.ReadFile(*script)
	if err != nil {
		fail(err.Error())
	}
	var raw []byte
	if *object == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(*object)
	}
	if err != nil {
		fail(err.Error())
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		fail("object: " + err.Error())
	}
	res, err := evaluate(string(src), obj)
	if err != nil {
		fail(err.Error())
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func evaluate(script string, obj map[string]any) (result, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs},
	} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name)); err != nil {
			return result{}, fmt.Errorf("opening %s: %w", lib.name, err)
		}
	}
	restrictOs(L)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return result{}, fmt.Errorf("script: %w", err)
	}
	ret := L.Get(-1)
	table, ok := ret.(*lua.LTable)
	if !ok {
		return result{}, fmt.Errorf("script returned %s, not a table", ret.Type())
	}
	res := result{Status: lua.LVAsString(table.RawGetString("status")),
		Message: lua.LVAsString(table.RawGetString("message"))}
	if !validStatuses[res.Status] {
		return result{}, fmt.Errorf("script returned status %q, which Argo CD would show as Unknown", res.Status)
	}
	return res, nil
}

// restrictOs drops every os function that touches the process, files or environment.
func restrictOs(L *lua.LState) {
	osTable, ok := L.GetGlobal(lua.OsLibName).(*lua.LTable)
	if !ok {
		return
	}
	var drop []lua.LValue
	osTable.ForEach(func(k, _ lua.LValue) {
		if !osAllowed[lua.LVAsString(k)] {
			drop = append(drop, k)
		}
	})
	for _, k := range drop {
		osTable.RawSet(k, lua.LNil)
	}
}

// toLua converts decoded JSON into Lua values; object keys are inserted in sorted order so that a
// script iterating with pairs sees the same order on every run.
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []any:
		t := L.NewTable()
		for _, item := range x {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]any:
		t := L.NewTable()
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			t.RawSetString(k, toLua(L, x[k]))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(x))
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "argocd-lua:", msg)
	os.Exit(1)
}
