// Resolves one name through Go's pure resolver (built by
// tests/tests/auto.rs; run with GODEBUG=netdns=go) and prints its first
// address.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lookup NAME")
		os.Exit(2)
	}
	r := &net.Resolver{PreferGo: true}
	addrs, err := r.LookupHost(context.Background(), os.Args[1])
	if err != nil || len(addrs) == 0 {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(addrs[0])
}
