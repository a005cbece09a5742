// avatars.js — the demo page's avatar panel: pick an avatar, or add a face from a photo and
// watch it become ready.
//
// Owns the <select> of avatars (ready ones can be picked; the others show their status), the
// photo upload with its progress and failure in words, and the preview shown on the stage.
// The protocol lives in headcast.js; the call itself in demo.js.

import { HeadcastError, createAvatar, listAvatars, waitAvatar } from "./headcast.js";

const DEFAULT_AVATAR = "default";
const PERCENT = 100;

export class AvatarPanel {
  /**
   * @param {{baseUrl: string, select: HTMLSelectElement, photo: HTMLInputElement,
   *          status: HTMLElement, onPreview: (url: string | null) => void}} parts
   */
  constructor({ baseUrl, select, photo, status, onPreview }) {
    this.baseUrl = baseUrl;
    this.select = select;
    this.photo = photo;
    this.status = status;
    this.onPreview = onPreview;
    this.avatars = new Map();
    select.addEventListener("change", () => this.showPreview());
    photo.addEventListener("change", () => {
      const file = photo.files?.[0];
      photo.value = "";
      if (file) this.add(file);
    });
  }

  /** The avatar id to call with. */
  get selected() {
    return this.select.value || DEFAULT_AVATAR;
  }

  /** Read the server's avatars into the list; keep (or make) `choose` the selected one. */
  async refresh(choose = this.selected) {
    let avatars;
    try {
      avatars = await listAvatars(this.baseUrl);
    } catch (err) {
      this.say(
        err instanceof HeadcastError && err.code === "unauthorized"
          ? "This server keeps its avatars behind an API key: the demo calls the default one."
          : err.message,
      );
      avatars = [{ id: DEFAULT_AVATAR, name: DEFAULT_AVATAR, status: "ready", preview_url: null }];
    }
    this.avatars = new Map(avatars.map((avatar) => [avatar.id, avatar]));
    this.select.replaceChildren(
      ...avatars.map((avatar) => {
        const option = document.createElement("option");
        option.value = avatar.id;
        const label = avatar.name ?? avatar.id;
        option.textContent = avatar.status === "ready" ? label : `${label} (${avatar.status})`;
        option.disabled = avatar.status !== "ready";
        return option;
      }),
    );
    const wanted = this.avatars.get(choose)?.status === "ready" ? choose : DEFAULT_AVATAR;
    this.select.value = wanted;
    this.showPreview();
  }

  /** Upload a photo and follow it until it is ready (then pick it) or failed (say why). */
  async add(file) {
    this.photo.disabled = true;
    try {
      this.say(`Uploading ${file.name}…`);
      const added = await createAvatar(this.baseUrl, file, { name: file.name });
      await this.refresh();
      const avatar = await waitAvatar(this.baseUrl, added.id, {
        onProgress: ({ status, progress }) =>
          this.say(`${file.name}: ${status} (${Math.round(progress * PERCENT)} %)`),
      });
      await this.refresh(avatar.id);
      this.say(
        avatar.status === "ready"
          ? `${file.name} is ready${avatar.message ? ` (${avatar.message})` : ""}: press Start call.`
          : `${file.name} could not become an avatar: ${avatar.message}`,
        avatar.status === "ready" ? "ok" : "bad",
      );
    } catch (err) {
      this.say(err.message, "bad");
    } finally {
      this.photo.disabled = false;
    }
  }

  showPreview() {
    const avatar = this.avatars.get(this.selected);
    this.onPreview(avatar?.preview_url ? `${this.baseUrl}${avatar.preview_url}` : null);
  }

  say(text, kind = "") {
    this.status.textContent = text;
    this.status.className = `hint ${kind}`;
  }
}
