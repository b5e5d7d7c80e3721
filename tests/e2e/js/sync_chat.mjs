// Two matrix-js-sdk clients chat through the homeserver, each learning
// everything through its own /sync loop (startClient).
//
// Input: one JSON argument {baseUrl, alice: {user, password}, bob: {...},
// historyRoom, messages, initialSyncLimit, timeoutMs}. Output: one line on
// stdout, "RESULT <json>", for tests/e2e/test_jssdk.py to check; the SDK's
// own logging goes to stderr.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const input = JSON.parse(process.argv[2]);
logger.setLevel("warn");
// Keep stdout for the result alone.
console.log = console.info = console.debug = (...args) => console.error(...args);

const deadline = Date.now() + input.timeoutMs;

function waitFor(what, check) {
    return new Promise((resolve, reject) => {
        const tick = () => {
            let value;
            try {
                value = check();
            } catch (err) {
                reject(err);
                return;
            }
            if (value) resolve(value);
            else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
            else setTimeout(tick, 20);
        };
        tick();
    });
}

async function signIn(who) {
    const anonymous = sdk.createClient({ baseUrl: input.baseUrl });
    const login = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: who.user },
        password: who.password,
        initial_device_display_name: `${who.user} on matrix-js-sdk`,
    });
    const client = sdk.createClient({
        baseUrl: input.baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
    });
    const syncStates = [];
    client.on(sdk.ClientEvent.Sync, (state) => syncStates.push(state));
    const live = [];
    client.on(sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline, removed, data) => {
        if (toStartOfTimeline || removed || !data?.liveEvent) return;
        if (event.getType() !== "m.room.message") return;
        live.push({ room: room?.roomId, id: event.getId(), sender: event.getSender(), body: event.getContent().body });
    });
    await client.startClient({ initialSyncLimit: input.initialSyncLimit, lazyLoadMembers: false });
    await waitFor(`${who.user}'s first sync`, () => client.isInitialSyncComplete());
    return { client, syncStates, live, userId: login.user_id };
}

const alice = await signIn(input.alice);
const bob = await signIn(input.bob);
const result = { aliceUserId: alice.userId, bobUserId: bob.userId };

// The history room: bob's initial sync held only the last `initialSyncLimit` events.
const history = bob.client.getRoom(input.historyRoom);
result.history = {
    name: history?.name,
    initialTimeline: history
        .getLiveTimeline()
        .getEvents()
        .filter((e) => e.getType() === "m.room.message")
        .map((e) => e.getContent().body),
};
// Scrolling back follows the timeline's prev_batch through /messages.
while (history.getLiveTimeline().getPaginationToken(sdk.EventTimeline.BACKWARDS) !== null) {
    const before = history.getLiveTimeline().getEvents().length;
    await bob.client.scrollback(history, 5);
    if (history.getLiveTimeline().getEvents().length === before) break;
}
result.history.afterScrollback = history
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);

// A new room: alice creates it and invites bob, who sees the invite through his sync.
const { room_id: roomId } = await alice.client.createRoom({ name: "JS chat", invite: [bob.userId] });
result.roomId = roomId;
await waitFor("bob's invite", () => bob.client.getRoom(roomId)?.getMyMembership() === "invite");
await bob.client.joinRoom(roomId);
await waitFor("alice seeing bob join", () => alice.client.getRoom(roomId)?.getMember(bob.userId)?.membership === "join");

// Alice talks; bob's sync loop brings every message.
const started = Date.now();
const sent = [];
for (let i = 0; i < input.messages; i++) {
    const { event_id: eventId } = await alice.client.sendTextMessage(roomId, `message ${i}`);
    sent.push(eventId);
}
await waitFor("bob receiving every message", () => bob.live.filter((e) => e.room === roomId).length >= input.messages);
result.deliveryMs = Date.now() - started;
result.sent = sent;
result.received = bob.live.filter((e) => e.room === roomId);
// And a reply the other way.
const { event_id: replyId } = await bob.client.sendTextMessage(roomId, "got them all");
await waitFor("alice receiving the reply", () => alice.live.some((e) => e.id === replyId));
result.replyId = replyId;

const room = bob.client.getRoom(roomId);
result.bobView = {
    name: room.name,
    membership: room.getMyMembership(),
    joined: room.getJoinedMembers().map((m) => m.userId).sort(),
    aliceName: room.getMember(alice.userId)?.name,
    liveTimelineIds: room
        .getLiveTimeline()
        .getEvents()
        .map((e) => e.getId()),
};
result.syncStates = { alice: [...new Set(alice.syncStates)], bob: [...new Set(bob.syncStates)] };

alice.client.stopClient();
bob.client.stopClient();
process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
process.exit(0);
