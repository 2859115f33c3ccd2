// kstatus computes an object's status the way Flux does (Kustomization `wait`/`healthChecks`,
// HelmRelease readiness), with sigs.k8s.io/cli-utils/pkg/kstatus/status:
//
//	kstatus -object policy.json    # or the object on stdin
//
// It prints one JSON object: {"status": "InProgress|Failed|Current|Terminating|NotFound|Unknown",
// "message": "..."}. Exit status 1 means the object could not be read or evaluated.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

func main() {
	object := flag.String("object", "-", "path of the object as JSON ('-' for stdin)")
	flag.Parse()
	var raw []byte
	var err error
	if *object == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(*object)
	}
	if err != nil {
		fail(err.Error())
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		fail("object: " + err.Error())
	}
	res, err := status.Compute(u)
	if err != nil {
		fail("compute: " + err.Error())
	}
	out, _ := json.Marshal(result{Status: res.Status.String(), Message: res.Message})
	fmt.Println(string(out))
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "kstatus:", msg)
	os.Exit(1)
}
