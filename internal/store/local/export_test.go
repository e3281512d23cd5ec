package local

import "os/user"

var userLookupGroup = user.LookupGroup
