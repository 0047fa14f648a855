// The Go peer of the load benchmark (benches/load.sh): the service a team would otherwise write
// in Go. net/http with the standard library only; `POST /v1/messages?wait=true` with the same
// bodies and the same work as Mailroom's built-in kinds: echo, sleep (a timer), fetch (one shared
// http.Client), and primes and hash on a pool of worker goroutines (one per core, fed by a
// channel) so CPU work does not run on the connection goroutines. No durability, no dispatch
// bookkeeping: the answer is the outcome, as Mailroom's is.
//
//	go run ./benches/go_peer 127.0.0.1:18095
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"runtime"
	"time"
)

type submission struct {
	Kind    string          `json:"kind"`
	Payload json.RawMessage `json:"payload"`
}

type job struct {
	work func() any
	done chan any
}

var (
	pool   = make(chan job, 1024)
	client = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 1024, MaxConnsPerHost: 1024},
	}
)

func countPrimes(limit uint64) uint64 {
	var count uint64
	for n := uint64(2); n <= limit; n++ {
		prime := true
		for d := uint64(2); d*d <= n; d++ {
			if n%d == 0 {
				prime = false
				break
			}
		}
		if prime {
			count++
		}
	}
	return count
}

func hashRounds(data string, rounds uint64) string {
	digest := sha256.Sum256([]byte(data))
	for r := uint64(1); r < rounds; r++ {
		digest = sha256.Sum256(digest[:])
	}
	return hex.EncodeToString(digest[:])
}

func onPool(work func() any) any {
	j := job{work: work, done: make(chan any, 1)}
	pool <- j
	return <-j.done
}

func fail(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func messages(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		fail(w, 405, "POST only")
		return
	}
	var s submission
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&s); err != nil {
		fail(w, 400, err.Error())
		return
	}
	var result any
	switch s.Kind {
	case "echo":
		result = s.Payload
	case "sleep":
		var a struct{ Ms uint64 }
		if err := json.Unmarshal(s.Payload, &a); err != nil {
			fail(w, 422, err.Error())
			return
		}
		time.Sleep(time.Duration(a.Ms) * time.Millisecond)
		result = map[string]uint64{"slept_ms": a.Ms}
	case "fetch":
		var a struct{ URL string }
		if err := json.Unmarshal(s.Payload, &a); err != nil {
			fail(w, 422, err.Error())
			return
		}
		started := time.Now()
		res, err := client.Get(a.URL)
		if err != nil {
			fail(w, 502, err.Error())
			return
		}
		body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
		res.Body.Close()
		result = map[string]any{"status": res.StatusCode, "bytes": len(body), "body": string(body),
			"elapsed_ms": float64(time.Since(started).Microseconds()) / 1000}
	case "primes":
		var a struct{ Limit uint64 }
		if err := json.Unmarshal(s.Payload, &a); err != nil {
			fail(w, 422, err.Error())
			return
		}
		result = onPool(func() any { return map[string]uint64{"count": countPrimes(a.Limit)} })
	case "hash":
		var a struct {
			Data   string
			Rounds uint64
		}
		if err := json.Unmarshal(s.Payload, &a); err != nil {
			fail(w, 422, err.Error())
			return
		}
		result = onPool(func() any { return map[string]string{"sha256": hashRounds(a.Data, a.Rounds)} })
	default:
		fail(w, 422, "no route for kind "+s.Kind)
		return
	}
	w.Header().Set("content-type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"kind": s.Kind, "status": "completed", "result": result})
}

func main() {
	addr := "127.0.0.1:18095"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		go func() {
			for j := range pool {
				j.done <- j.work()
			}
		}()
	}
	http.HandleFunc("/v1/messages", messages)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"status":"ok"}`)) })
	log.Printf("go peer listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
