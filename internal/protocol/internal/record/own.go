package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"

	"cairn/internal/derivation"
	"cairn/internal/protocol"
	"cairn/internal/storepath"
	"cairn/internal/wire"
)

// conn is our own client's connection to the daemon, through the proxy.
type conn struct {
	c net.Conn
	r *wire.Reader
	w *wire.Writer
	p protocol.Params
}

func (rec *recorder) dial(step string) (*conn, error) {
	rec.mu.Lock()
	rec.step, rec.n = step, 0
	rec.mu.Unlock()
	c, err := net.Dial("unix", rec.proxy)
	if err != nil {
		return nil, err
	}
	r, w := wire.NewReader(c), wire.NewWriter(c)
	di, err := protocol.ClientHandshake(r, w, protocol.ClientConfig{Version: protocol.Nix28}, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: handshake: %w", step, err)
	}
	return &conn{c: c, r: r, w: w, p: di.Params}, nil
}

// call sends req (and payload, when not nil, as a framed stream) and reads
// the reply. A daemon error is returned as *protocol.Error.
func (c *conn) call(req protocol.Request, payload []byte) (protocol.Reply, error) {
	protocol.WriteRequest(c.w, c.p, req)
	if payload != nil {
		fw := wire.NewFramedWriter(c.w)
		fw.Write(payload)
		if err := fw.Close(); err != nil {
			return nil, err
		}
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	if err := protocol.ProcessStderr(c.r, c.p, nil); err != nil {
		return nil, err
	}
	reply := protocol.NewReply(req.Op(), c.p)
	if reply != nil {
		reply.Read(c.r, c.p)
	}
	return reply, c.r.Err()
}

func (rec *recorder) finish(c *conn, step string) {
	c.c.(*net.UnixConn).CloseWrite()
	buf := make([]byte, 4096)
	for {
		if _, err := c.c.Read(buf); err != nil {
			break
		}
	}
	c.c.Close()
	rec.wg.Wait()
	rec.steps = append(rec.steps, fmt.Sprintf("%s\t1\tcairn protocol client (internal/record/own.go)\n", step))
	log.Printf("%s: own client", step)
}

// ownClient records the ops no Nix 2.8 command sends, with our own client.
func (rec *recorder) ownClient(added, drvPathStr string) error {
	sp := func(s string) storepath.StorePath {
		p, err := storepath.Parse(s)
		if err != nil {
			log.Fatal(err)
		}
		return p
	}
	valid, drvPath, bogusPath := sp(added), sp(drvPathStr), sp(bogus)
	drvText, err := os.ReadFile(filepath.Join(rec.dir, "root", drvPath.String()))
	if err != nil {
		return err
	}
	drv, err := derivation.Parse(storepath.DefaultStoreDir, drvText, strings.TrimSuffix(drvPath.Name(), ".drv"))
	if err != nil {
		return err
	}
	outPath := drv.Outputs["out"].Path

	type call struct {
		req     protocol.Request
		payload []byte
		fails   bool
	}
	path := func(op protocol.Op, p storepath.StorePath) protocol.Request {
		return &protocol.PathRequest{Code: op, Path: p}
	}
	steps := []struct {
		name  string
		calls []call
	}{
		{"own-queries", []call{
			{req: &protocol.QueryPathFromHashPartRequest{HashPart: valid.HashPart()}},
			{req: &protocol.QueryPathFromHashPartRequest{HashPart: bogusPath.HashPart()}},
			{req: path(protocol.OpQueryDerivationOutputMap, drvPath)},
			{req: path(protocol.OpQueryValidDerivers, outPath)},
			{req: path(protocol.OpQueryReferences, drvPath)},
			{req: path(protocol.OpQueryDeriver, outPath)},
			{req: path(protocol.OpHasSubstitutes, valid)},
			{req: path(protocol.OpQueryPathHash, valid)},
			{req: path(protocol.OpQueryDerivationOutputs, drvPath)},
			{req: path(protocol.OpQueryDerivationOutputNames, drvPath)},
		}},
		{"own-valid-paths", []call{
			{req: &protocol.QueryValidPathsRequest{Paths: []storepath.StorePath{valid, bogusPath}}},
			{req: &protocol.PathsRequest{Code: protocol.OpQuerySubstitutablePaths, Paths: []storepath.StorePath{bogusPath}}},
			{req: &protocol.QuerySubstitutablePathInfosRequest{Paths: []storepath.StorePath{bogusPath}}},
			{req: path(protocol.OpQuerySubstitutablePathInfo, bogusPath)},
		}},
		{"own-text", []call{
			{req: &protocol.AddTextToStoreRequest{Name: "own.txt", Text: "added with op 8\n", References: []storepath.StorePath{valid}}},
		}},
		{"own-build", []call{
			{req: &protocol.QueryMissingRequest{Paths: []protocol.DerivedPath{{Path: drvPath, Built: true, All: true}}}},
			{req: &protocol.BuildPathsRequest{Code: protocol.OpBuildPathsWithResults, Paths: []protocol.DerivedPath{
				{Path: drvPath, Built: true, Outputs: []string{"out"}}, {Path: valid}}}},
			{req: &protocol.BuildDerivationRequest{DrvPath: drvPath, Drv: drv}},
		}},
		{"own-roots", []call{
			{req: path(protocol.OpAddTempRoot, valid)},
			{req: &protocol.EmptyRequest{Code: protocol.OpSyncWithGC}},
			{req: path(protocol.OpEnsurePath, valid)},
			{req: &protocol.AddSignaturesRequest{Path: valid, Signatures: []string{"test-1:" + strings.Repeat("A", 86) + "=="}}},
			{req: &protocol.AddBuildLogRequest{DrvBase: drvPath.Base()}, payload: []byte("a build log\n")},
		}},
		{"own-error-path", []call{
			{req: path(protocol.OpEnsurePath, bogusPath), fails: true},
			{req: path(protocol.OpIsValidPath, valid)},
		}},
		{"own-unknown-op", []call{
			{req: &protocol.EmptyRequest{Code: 99}, fails: true},
		}},
	}
	for _, st := range steps {
		c, err := rec.dial(st.name)
		if err != nil {
			return err
		}
		for _, cl := range st.calls {
			_, err := c.call(cl.req, cl.payload)
			var perr *protocol.Error
			if cl.fails != errors.As(err, &perr) {
				return fmt.Errorf("%s: %v: %v", st.name, cl.req.Op(), err)
			}
			if cl.fails && cl.req.Op() == 99 {
				break
			}
		}
		rec.finish(c, st.name)
	}
	return nil
}
