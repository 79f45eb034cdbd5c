package redisstore

// LuaEntryID is luaEntryID, for the test that runs it against an encoded
// entry.
var LuaEntryID = luaEntryID
