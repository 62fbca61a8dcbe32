package main

import "errors"

func cmdDemo(args []string) error        { return errors.New("not yet") }
func cmdTFTPServer(args []string) error { return errors.New("not yet") }
func cmdTFTPGet(args []string) error    { return errors.New("not yet") }
