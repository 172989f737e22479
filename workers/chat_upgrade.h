/* chat_upgrade.h - who a chat socket is (chat_upgrade.c). The routes
 * themselves are chat_routes() in handlers.h. */
#ifndef RESIL_CHAT_UPGRADE_H
#define RESIL_CHAT_UPGRADE_H

#include "chat.h"

/* Socket.IO CONNECT from a socket that came without a token: auth[0..len)
 * is the packet's auth object ({"token": ...}). Connects the namespace, or
 * refuses with CONNECT_ERROR and a close. */
void chat_upgrade_connect(struct ws_conn *c, const char *auth, size_t len);

#endif
